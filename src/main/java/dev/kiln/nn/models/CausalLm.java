package dev.kiln.nn.models;

import dev.kiln.KilnException;
import dev.kiln.autograd.Tape;
import dev.kiln.nn.Module;
import dev.kiln.nn.Parameter;
import dev.kiln.ops.Losses;
import dev.kiln.tensor.DType;
import dev.kiln.tensor.Device;
import dev.kiln.tensor.Rng;
import dev.kiln.tensor.Tensor;

import java.util.Map;

/**
 * A decoder-only language model as the trainer, evaluation and sampling see it: token ids (B, T) → logits
 * (B, T, vocab), the next-token loss, and its weights under Hugging Face's names. {@link Gpt} and {@link Llama}
 * are the two; {@link #build} picks one by {@code model.arch}. Techniques that change a GPT's structure (growth,
 * layer drop) are GPT's alone: here they refuse by name.
 */
public abstract class CausalLm extends Module {

    /** The model {@code model.arch} names, initialised from {@code seed} (vocab_size resolved). */
    public static CausalLm build(GptConfig config, long seed, DType dtype) {
        return config.llama() ? new Llama(LlamaConfig.of(config), seed, dtype) : new Gpt(config, seed, dtype);
    }

    /** idx int32 (B, T) → logits (B, T, vocab). */
    public abstract Tensor forward(Tensor idx);

    /** Where the parameters are (the device of the first; {@link Module#to} moves them all together). */
    public Device device() {
        var params = namedParameters().values();
        return params.isEmpty() ? Device.CPU : params.iterator().next().device();
    }

    /** Token ids (or targets) {@code b × t} as an I32 tensor on the model's device, uploaded straight from the array. */
    public Tensor ids(int[] data, int b, int t) {
        return Tensor.ofInts(device(), data, b, t);
    }

    /** The longest sequence the model takes (block_size). */
    public abstract int blockSize();

    public abstract int vocabSize();

    /** Blocks now (GPT's can grow in training). */
    public abstract int depth();

    /** The generator behind every dropout mask (its state is part of a checkpoint; one that never draws is still kept). */
    public abstract Rng dropoutRng();

    /** The gain of the final norm (the trainer's fault injection overwrites it to simulate a diverged update). */
    public abstract Parameter finalNormWeight();

    /** One line for the run log: architecture and sizes. */
    public abstract String describe();

    /** The parameters in Hugging Face's layout and names (views, no copies): what a checkpoint's model.safetensors holds. */
    public abstract Map<String, Tensor> hfStateDict();

    /** Loads {@link #hfStateDict}-layout tensors; a missing, unexpected or mis-shaped one is a KilnException naming it and {@code source}. */
    public abstract void loadHfStateDict(Map<String, Tensor> hf, String source);

    /** Loads a plain (adapter-free) HF file into the base parameters, leaving LoRA adapters alone (lora.init_from). */
    public abstract void loadHfBase(Map<String, Tensor> hf, String source);

    /** Mean cross-entropy of next-token prediction; targets −1 are ignored. */
    public Tensor loss(Tensor idx, Tensor targets) {
        return loss(idx, targets, 0, 0);
    }

    /**
     * Mean cross-entropy of next-token prediction with label smoothing ε ∈ [0, 1) and z-loss
     * coefficient c ≥ 0 (see {@link Losses#crossEntropy(Tensor, Tensor, int, double, double)});
     * targets −1 are ignored. ε = c = 0 is {@link #loss(Tensor, Tensor)}.
     */
    public Tensor loss(Tensor idx, Tensor targets, double labelSmoothing, double zLoss) {
        return Losses.crossEntropy(forward(idx), targets, -1, labelSmoothing, zLoss);
    }

    /**
     * The mean next-token cross-entropy of each sequence of the batch, idx and targets int32 (B, T) → B values,
     * without gradient (for ranking samples: selective backprop, difficulty scores). Each is the mean of its T
     * per-token losses, summed in order in double precision.
     */
    public double[] sequenceLosses(Tensor idx, Tensor targets) {
        int b = idx.size(0), t = idx.size(1);
        double[] out = new double[b];
        try (var ng = Tape.noGradScope()) {
            Tensor rows = Losses.crossEntropyRows(forward(idx), targets, -1);
            double[] all = rows.toDoubleArray(); // from the device, if there
            for (int i = 0; i < b; i++) {
                double s = 0;
                for (int j = 0; j < t; j++) s += all[i * t + j];
                out[i] = s / t;
            }
        }
        return out;
    }

    // ---- GPT-only structure changes: the defaults refuse (config validation stops them first) ----------

    /** Progressive stacking; see {@link Gpt#grow}. */
    public void grow(int toLayers, String method, long seed) {
        throw new KilnException("growth is implemented for model.arch gpt only, not for " + describe());
    }

    /** Cuts the model back to {@code depth} blocks; see {@link Gpt#truncate}. */
    public void truncate(int depth) {
        if (depth != depth()) throw new KilnException("changing depth is implemented for model.arch gpt only, not for " + describe());
    }

    /** Progressive layer drop's plan for the next training forwards; null clears it. See {@link Gpt#setLayerPlan}. */
    public void setLayerPlan(boolean[] keep, double[] keepProb) {
        if (keep != null) throw new KilnException("layer drop is implemented for model.arch gpt only, not for " + describe());
    }

    /** Which activations training forwards recompute in backward ({@code train.recompute}); see {@link Gpt#setRecompute}. */
    public void setRecompute(dev.kiln.nn.Recompute mode) {
        if (mode != dev.kiln.nn.Recompute.NONE) throw new KilnException("activation recomputation is implemented for model.arch gpt only, not for " + describe());
    }

    public dev.kiln.nn.Recompute recompute() {
        return dev.kiln.nn.Recompute.NONE;
    }
}
