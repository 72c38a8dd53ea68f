package dev.kiln.nn.models;

import dev.kiln.nn.Dropout;
import dev.kiln.nn.Embedding;
import dev.kiln.nn.LayerNorm;
import dev.kiln.nn.Linear;
import dev.kiln.nn.Module;
import dev.kiln.nn.Parameter;
import dev.kiln.nn.Recompute;
import dev.kiln.autograd.Checkpoint;
import dev.kiln.ops.Activations;
import dev.kiln.ops.Arith;
import dev.kiln.ops.Attention;
import dev.kiln.ops.Linalg;
import dev.kiln.tensor.DType;
import dev.kiln.tensor.MemoryScope;
import dev.kiln.tensor.Rng;
import dev.kiln.tensor.Tensor;

import java.util.ArrayList;
import java.util.List;
import java.util.Map;

/**
 * GPT-2 / nanoGPT: learned positions, pre-LayerNorm blocks, causal self-attention, 4× GELU MLP,
 * LM head tied to the token embedding. Module names are Hugging Face's GPT-2 names.
 *
 * <p>Parametrisations ({@code model.init}):
 * <ul>
 * <li>gpt2: N(0, 0.02) for embeddings and matrices, residual projections (attn and mlp c_proj)
 *     N(0, 0.02/√(2·n_layer)), zero biases, LayerNorm 1/0.</li>
 * <li>small: every matrix and embedding N(0, √(2/(5·n_embd))) (Nguyen &amp; Salazar 2019), residual
 *     projections included and not depth-scaled; biases and LayerNorm as gpt2.</li>
 * <li>mup (μP for Adam, Yang et al. 2022, Table 3), with r = mup_base_width / n_embd: hidden matrices
 *     (c_attn, c_fc, both c_proj) get gpt2's std × √r, i.e. variance ∝ 1/fan_in, and their Adam learning
 *     rate × r (the optimizer's parameter groups, see {@link #isHiddenMatrix}); attention scores are
 *     q·k/d_head instead of q·k/√d_head; logits are multiplied by r. The tied wte is treated as μP's
 *     input embedding for init and learning rate (N(0, 0.02), unscaled LR) and as its output layer only
 *     through the logit multiplier r, which is what the mup package's MuSharedReadout does. Positions,
 *     biases and LayerNorm gains are vectors: unscaled. Weight decay per step stays lr·wd for the hidden matrices (their group's
 *     weight_decay is wd/r, as the mup package's MuAdamW does for torch's lr-coupled decay). At n_embd = base_width (r = 1) every weight and
 *     learning rate equals gpt2's; only the attention scale differs.</li>
 * </ul>
 *
 * <p>Two training-time structure changes live here as mechanisms (their schedules are the trainer's):
 * depth growth ({@link #grow}) and per-step block skipping ({@link #setLayerPlan}).
 */
public final class Gpt extends CausalLm {
    public final GptConfig config;
    public final Embedding wte, wpe;
    public final List<Block> blocks = new ArrayList<>();
    public final LayerNorm lnF;
    private final Dropout drop;
    private final Rng dropoutRng;
    private final Module h;
    private final Init init;
    private final DType dtype;
    private boolean[] keep;
    private double[] keepProb;
    private long blocksRun, blocksSkipped;
    private Recompute recompute = Recompute.NONE;
    private UnitHook unitHook;
    /** Tensor parallelism: null for the whole model; else this shard's collectives ({@link #Gpt(Gpt, TensorParallelism)}). */
    private final TensorParallelism tp;
    /** Under tensor parallelism: the first vocabulary row this shard holds, and how each sharded parameter is cut. */
    private final int vocabStart;
    private final Map<String, TensorParallelism.Split> splits = new java.util.LinkedHashMap<>();
    private final Map<String, int[]> wholeShapes = new java.util.LinkedHashMap<>(); // of the sharded parameters (sharded checkpoints)

    /**
     * Called around the model's units in every forward: unit −1 (the embeddings, final norm and tied head) is entered
     * at the start and exited at the end, block i around its forward. ZeRO-3 gathers a unit's parameters on entry
     * and frees them on exit.
     */
    public interface UnitHook {
        void enter(int unit);

        void exit(int unit);
    }

    /** Sets (or with null clears) the {@link UnitHook}. */
    public void setUnitHook(UnitHook hook) {
        this.unitHook = hook;
    }

    /** Standard deviations of the three tensor classes an initialisation distinguishes. */
    private record Init(double embedding, double matrix, double projection) {
        static Init of(GptConfig c) {
            String kind = c.init() == null ? "gpt2" : c.init();
            return switch (kind) {
                case "gpt2" -> new Init(0.02, 0.02, 0.02 / Math.sqrt(2.0 * c.n_layer()));
                case "small" -> {
                    double s = Math.sqrt(2.0 / (5.0 * c.n_embd()));
                    yield new Init(s, s, s);
                }
                case "mup" -> { // √r is exactly 1 at r = 1, so mup at the base width draws gpt2's numbers
                    double w = Math.sqrt(c.mupRatio());
                    yield new Init(0.02, 0.02 * w, 0.02 / Math.sqrt(2.0 * c.n_layer()) * w);
                }
                default -> throw new IllegalArgumentException("model.init must be one of " + GptConfig.INITS + ", got " + kind);
            };
        }
    }

    public Gpt(GptConfig config, long seed, DType dtype) {
        this.config = config;
        if (config.vocab_size() <= 0) throw new IllegalArgumentException("vocab_size must be set, got " + config.vocab_size());
        this.init = Init.of(config);
        this.dtype = dtype;
        Rng rng = new Rng(seed);
        Rng dropoutRng = new Rng(seed ^ 0x5DEECE66DL);
        int c = config.n_embd();
        Module transformer = registerModule("transformer", new Container());
        wte = transformer.registerModuleIn("wte", new Embedding(Tensor.randn(rng, init.embedding(), dtype, config.vocab_size(), c)));
        wpe = transformer.registerModuleIn("wpe", new Embedding(Tensor.randn(rng, init.embedding(), dtype, config.block_size(), c)));
        drop = transformer.registerModuleIn("drop", new Dropout(config.dropout(), dropoutRng));
        h = transformer.registerModuleIn("h", new Container());
        for (int i = 0; i < config.n_layer(); i++)
            blocks.add(h.registerModuleIn(Integer.toString(i), new Block(config, rng, init, dtype, dropoutRng)));
        lnF = transformer.registerModuleIn("ln_f", new LayerNorm(c, config.bias(), dtype));
        this.dropoutRng = dropoutRng;
        this.tp = null;
        this.vocabStart = 0;
    }

    /**
     * Shard {@code tp.rank()} of {@code full} under Megatron-style tensor parallelism over {@code tp.size()} shards, so it
     * starts from exactly the single-process initialisation: each block's c_attn keeps the q, k and v rows of its
     * n_head/size heads and c_fc its rows (column-parallel), both c_proj the matching input columns (row-parallel, bias
     * kept whole and added once after the all-reduce); wte keeps its rows of the vocabulary padded with zero rows to a
     * multiple of the shards (vocabulary-parallel embedding and tied head). LayerNorms, wpe and the c_proj biases are
     * replicated. {@code full} is left as it was (the caller frees it).
     */
    public Gpt(Gpt full, TensorParallelism tp) {
        this.config = full.config;
        this.init = full.init;
        this.dtype = full.dtype;
        this.tp = tp;
        int t = tp.size(), r = tp.rank(), c = config.n_embd();
        if (config.n_head() % t != 0)
            throw new IllegalArgumentException("model.n_head " + config.n_head() + " is not divisible by parallel.tp " + t + " (each shard takes whole heads)");
        if (full.tp != null || full.blocks.size() != config.n_layer())
            throw new IllegalArgumentException("tensor parallelism shards a whole, ungrown GPT");
        int rowsPerShard = (config.vocab_size() + t - 1) / t;
        this.vocabStart = r * rowsPerShard;
        Module transformer = registerModule("transformer", new Container());
        wte = transformer.registerModuleIn("wte", new Embedding(shard("transformer.wte.weight", full.wte.weight, new TensorParallelism.Split(1, rowsPerShard * c, rowsPerShard, c))));
        wpe = transformer.registerModuleIn("wpe", new Embedding(full.wpe.weight));
        drop = transformer.registerModuleIn("drop", new Dropout(config.dropout(), full.dropoutRng));
        h = transformer.registerModuleIn("h", new Container());
        for (int i = 0; i < full.blocks.size(); i++) {
            String prefix = "transformer.h." + i + ".";
            blocks.add(h.registerModuleIn(Integer.toString(i), new Block(full.blocks.get(i), config, tp, (name, p, split) -> shard(prefix + name, p, split))));
        }
        lnF = transformer.registerModuleIn("ln_f", new LayerNorm(c, config.bias(), dtype));
        lnF.weight.copyFrom(full.lnF.weight);
        if (lnF.bias != null) lnF.bias.copyFrom(full.lnF.bias);
        this.dropoutRng = full.dropoutRng;
    }

    private Tensor shard(String name, Tensor full, TensorParallelism.Split split) {
        splits.put(name, split);
        wholeShapes.put(name, full.shape());
        return split.slice(full, tp.rank(), tp.size());
    }

    /** Cuts a block's full tensor for this shard, recording the cut under the parameter's name. */
    private interface Sharder {
        Tensor shard(String name, Tensor full, TensorParallelism.Split split);
    }

    /** Null for the whole model, else the tensor parallelism this shard runs under. */
    public TensorParallelism tensorParallelism() {
        return tp;
    }

    /** Under tensor parallelism, the sharded parameters by name and how each is cut (the others are replicated); else empty. */
    public Map<String, TensorParallelism.Split> tensorParallelSplits() {
        return java.util.Collections.unmodifiableMap(splits);
    }

    /** Under tensor parallelism, the whole (unsharded) shape of the sharded parameter {@code name}; null for any other. */
    public int[] tensorParallelWholeShape(String name) {
        int[] s = wholeShapes.get(name);
        return s == null ? null : s.clone();
    }

    /** The generator behind every dropout mask (its state is part of a checkpoint). */
    @Override
    public Rng dropoutRng() {
        return dropoutRng;
    }

    @Override
    public int blockSize() {
        return config.block_size();
    }

    @Override
    public int vocabSize() {
        return config.vocab_size();
    }

    @Override
    public Parameter finalNormWeight() {
        return lnF.weight;
    }

    @Override
    public String describe() {
        return String.format("GPT %d layers, %d heads, %d embd, block %d, vocab %d", depth(), config.n_head(), config.n_embd(), config.block_size(), config.vocab_size());
    }

    /** HF GPT-2 layout: see {@link GptHfFormat}. */
    @Override
    public Map<String, Tensor> hfStateDict() {
        requireWhole("a Hugging Face state dict (checkpoints consolidate the shards first)");
        return GptHfFormat.export(this);
    }

    @Override
    public void loadHfStateDict(Map<String, Tensor> hf, String source) {
        requireWhole("loading " + source + " (load the whole model, then shard it)");
        GptHfFormat.load(this, hf, source);
    }

    @Override
    public void loadHfBase(Map<String, Tensor> hf, String source) {
        requireWhole("loading " + source);
        GptHfFormat.loadBase(this, hf, source);
    }

    /** Blocks now: config.n_layer until {@link #grow} (a checkpoint records it). */
    @Override
    public int depth() {
        return blocks.size();
    }

    /**
     * Whether μP treats the named parameter as a hidden matrix (learning rate × base_width/n_embd):
     * the weights of c_attn, c_fc and both c_proj. Embeddings, biases and norm gains are not.
     */
    public static boolean isHiddenMatrix(String name) {
        return name.startsWith("transformer.h.") && name.endsWith(".weight")
                && (name.contains(".attn.c_attn.") || name.contains(".c_proj.") || name.contains(".mlp.c_fc."));
    }

    /**
     * Called around each block's forward, e.g. by parameter offload to fetch the block's weights before it runs and
     * release them after; each may return its input through an identity op whose backward does the same in reverse.
     */
    public interface BlockHooks {
        Tensor beforeBlock(int block, Tensor x);

        Tensor afterBlock(int block, Tensor y);
    }

    private BlockHooks hooks;

    /** Installs (or, with null, removes) the {@link BlockHooks}. */
    public void setBlockHooks(BlockHooks hooks) {
        this.hooks = hooks;
    }

    /** idx int32 (B, T) → logits (B, T, vocab); under tensor parallelism gathered from the shards, without gradient. */
    @Override
    public Tensor forward(Tensor idx) {
        return tp == null ? shardLogits(idx) : tp.gatherVocab(shardLogits(idx), config.vocab_size());
    }

    /** Under tensor parallelism the vocabulary-parallel cross-entropy of this shard's logits; else the plain one. */
    @Override
    public Tensor loss(Tensor idx, Tensor targets, double labelSmoothing, double zLoss) {
        if (tp == null) return super.loss(idx, targets, labelSmoothing, zLoss);
        return tp.vocabParallelCrossEntropy(shardLogits(idx), targets, vocabStart, config.vocab_size(), labelSmoothing, zLoss);
    }

    /**
     * The logits of this shard's vocabulary rows (all of them without tensor parallelism): {@link #embed}, every
     * {@link #block}, {@link #head}.
     */
    private Tensor shardLogits(Tensor idx) {
        UnitHook hook = unitHook;
        if (hook != null) hook.enter(-1);
        Tensor x = embed(idx);
        for (int i = 0; i < blocks.size(); i++) x = block(i, x);
        Tensor logits = head(x);
        if (hook != null) hook.exit(-1);
        return logits;
    }

    /**
     * The start of the forward: token plus position embeddings (the token one vocabulary-parallel under tensor
     * parallelism), dropout; idx int32 (B, T) → (B, T, C). Pipeline parallelism runs the model in these pieces, stage 0
     * this one.
     */
    public Tensor embed(Tensor idx) {
        int t = idx.size(1);
        if (t > config.block_size())
            throw new IllegalArgumentException("sequence length " + t + " exceeds block_size " + config.block_size());
        int[] pos = new int[t];
        for (int i = 0; i < t; i++) pos[i] = i;
        Tensor tokens = tp == null ? wte.forward(idx) : tp.vocabParallelEmbedding(idx, wte.weight, vocabStart);
        Tensor x = Arith.add(tokens, wpe.forward(Tensor.ofInts(idx.device(), pos, t)));
        return drop.forward(x);
    }

    /** Block {@code i} of the forward on x (B, T, C), with the layer plan, recomputation and hooks that apply. */
    public Tensor block(int i, Tensor x) {
        boolean planned = keep != null && isTraining(); // layer drop: training only, never in eval
        if (planned && !keep[i]) {
            blocksSkipped++;
            return x;
        }
        Block block = blocks.get(i);
        double scale = planned ? 1.0 / keepProb[i] : 1.0;
        UnitHook hook = unitHook;
        if (hook != null) hook.enter(i);
        if (hooks != null) x = hooks.beforeBlock(i, x);
        x = recompute == Recompute.FULL
                ? Checkpoint.apply(in -> block.forward(in, scale, Recompute.NONE), x, dropoutRng, block.parameters())
                : block.forward(x, scale, recompute);
        if (hooks != null) x = hooks.afterBlock(i, x);
        if (hook != null) hook.exit(i);
        blocksRun++;
        return x;
    }

    /**
     * The end of the forward: final norm, μP's output multiplier, the head tied to wte; x (B, T, C) → logits (B, T,
     * vocab), under tensor parallelism this shard's vocabulary rows only (see {@link #loss}).
     */
    public Tensor head(Tensor x) {
        x = lnF.forward(x);
        double r = config.mupRatio();
        if (r != 1.0) x = Arith.mul(x, r); // μP output multiplier (on the C-wide input of the head: cheaper than on V logits)
        return Linalg.linear(tp == null ? x : tp.copyToShards(x), wte.weight, null); // vocab-parallel head: f before it
    }

    /**
     * {@link #head} and the mean cross-entropy against {@code targets} (−1 ignored): the plain one, or under tensor
     * parallelism the vocabulary-parallel one of this shard's logits. The last pipeline stage ends with this.
     */
    public Tensor headLoss(Tensor x, Tensor targets, double labelSmoothing, double zLoss) {
        Tensor logits = head(x);
        return tp == null ? dev.kiln.ops.Losses.crossEntropy(logits, targets, -1, labelSmoothing, zLoss)
                : tp.vocabParallelCrossEntropy(logits, targets, vocabStart, config.vocab_size(), labelSmoothing, zLoss);
    }

    // ---- progressive stacking ------------------------------------------------------------------------

    /**
     * Grows the model to {@code toLayers} blocks, appended on top, each the identity at first: its attn
     * and mlp c_proj (weights and biases) are zero, so both residual branches add exactly 0 and the
     * logits do not change, bit for bit. {@code copy}: the rest of new block j is a copy of block
     * j mod n (Gong et al. 2019 stack the network on itself: n → 2n repeats blocks 0..n−1);
     * {@code zero}: the rest is freshly initialised (this model's init, from an Rng seeded by
     * {@code seed} and {@code toLayers}, so a rerun draws the same). n_layer in {@link #config} stays
     * the starting depth.
     */
    @Override
    public void grow(int toLayers, String method, long seed) {
        requireWhole("growth");
        int from = blocks.size();
        if (toLayers <= from) throw new IllegalArgumentException("cannot grow " + from + " blocks to " + toLayers);
        boolean copy = switch (method) {
            case "copy" -> true;
            case "zero" -> false;
            default -> throw new IllegalArgumentException("growth method must be copy or zero, got " + method);
        };
        Rng rng = copy ? null : new Rng(seed * 0x9E3779B97F4A7C15L + toLayers);
        try (var scope = MemoryScope.open()) { // frees the initial values the new Parameters copied
            for (int j = from; j < toLayers; j++) {
                Block b = new Block(config, rng, init, dtype, dropoutRng);
                if (copy) b.copyFrom(blocks.get(j % from));
                b.zeroOutputProjections();
                blocks.add(h.registerModuleIn(Integer.toString(j), b));
            }
        }
    }

    /** Drops the top blocks down to {@code depth} (a rollback to a checkpoint written before growth). */
    @Override
    public void truncate(int depth) {
        if (depth < 1 || depth > blocks.size()) throw new IllegalArgumentException("cannot truncate " + blocks.size() + " blocks to " + depth);
        while (blocks.size() > depth) {
            int last = blocks.size() - 1;
            h.removeModuleIn(Integer.toString(last));
            blocks.remove(last);
        }
    }

    // ---- progressive layer drop ----------------------------------------------------------------------

    /**
     * The blocks the next training forwards run: block i runs when {@code keep[i]}, its residual branches
     * scaled by 1/{@code keepProb[i]} (inverted stochastic depth: each branch keeps its expected value,
     * so evaluation, which always runs every block unscaled, needs no correction). Null clears the plan.
     * Ignored in eval mode.
     */
    @Override
    public void setLayerPlan(boolean[] keep, double[] keepProb) {
        if (keep != null) requireWhole("layer drop");
        if (keep != null && (keep.length != blocks.size() || keepProb == null || keepProb.length != blocks.size()))
            throw new IllegalArgumentException("layer plan for " + (keep.length) + " blocks, model has " + blocks.size());
        this.keep = keep;
        this.keepProb = keep == null ? null : keepProb;
    }

    /** Which activations training forwards recompute in backward instead of keeping ({@code train.recompute}). */
    @Override
    public void setRecompute(Recompute mode) {
        if (mode != Recompute.NONE) requireWhole("train.recompute");
        this.recompute = mode;
    }

    @Override
    public Recompute recompute() {
        return recompute;
    }

    private void requireWhole(String what) {
        if (tp != null) throw new dev.kiln.KilnException(what + " is not supported on a tensor-parallel shard of the GPT (parallel.tp " + tp.size() + ")");
    }

    /** Block forwards run so far (every forward, training and eval). */
    public long blocksRun() {
        return blocksRun;
    }

    /** Block forwards skipped by the layer plan so far. */
    public long blocksSkipped() {
        return blocksSkipped;
    }

    /** One transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x)). */
    public static final class Block extends Module {
        final LayerNorm ln1, ln2;
        final Linear cAttn, attnProj, cFc, mlpProj;
        final Dropout residDrop1, residDrop2;
        final int nHead; // this shard's heads under tensor parallelism
        private final Rng dropoutRng;
        private final TensorParallelism tp; // null: the whole block
        /** μP only: (3C) column scales 1/√d on q, 1 on k and v, making the kernel's q·k/√d a q·k/d. */
        private final Tensor qkvScale;

        /** {@code rng} null: zero matrices (a block about to be overwritten by a copy). */
        Block(GptConfig cfg, Rng rng, Init init, DType dtype, Rng dropoutRng) {
            int c = cfg.n_embd();
            nHead = cfg.n_head();
            ln1 = registerModule("ln_1", new LayerNorm(c, cfg.bias(), dtype));
            Module attn = registerModule("attn", new Container());
            cAttn = attn.registerModuleIn("c_attn", linear(rng, 3 * c, c, init.matrix(), cfg.bias(), dtype));
            attnProj = attn.registerModuleIn("c_proj", linear(rng, c, c, init.projection(), cfg.bias(), dtype));
            ln2 = registerModule("ln_2", new LayerNorm(c, cfg.bias(), dtype));
            Module mlp = registerModule("mlp", new Container());
            cFc = mlp.registerModuleIn("c_fc", linear(rng, 4 * c, c, init.matrix(), cfg.bias(), dtype));
            mlpProj = mlp.registerModuleIn("c_proj", linear(rng, c, 4 * c, init.projection(), cfg.bias(), dtype));
            residDrop1 = attn.registerModuleIn("resid_dropout", new Dropout(cfg.dropout(), dropoutRng));
            residDrop2 = mlp.registerModuleIn("dropout", new Dropout(cfg.dropout(), dropoutRng));
            qkvScale = cfg.mup() ? qkvScale(c, cfg.headSize(), dtype) : null;
            this.dropoutRng = dropoutRng;
            this.tp = null;
        }

        /** This shard of {@code full} (see {@link Gpt#Gpt(Gpt, TensorParallelism)}); {@code sharder} cuts and records each sharded tensor. */
        private Block(Block full, GptConfig cfg, TensorParallelism tp, Sharder sharder) {
            int t = tp.size(), c = cfg.n_embd(), cs = c / t, fs = 4 * c / t;
            boolean bias = cfg.bias();
            nHead = full.nHead / t;
            ln1 = registerModule("ln_1", copyOf(full.ln1, c, bias));
            Module attn = registerModule("attn", new Container());
            cAttn = attn.registerModuleIn("c_attn", new Linear( // column-parallel: the q, k and v rows of this shard's heads
                    sharder.shard("attn.c_attn.weight", full.cAttn.weight, new TensorParallelism.Split(3, cs * c, 3 * cs, c)),
                    bias ? sharder.shard("attn.c_attn.bias", full.cAttn.bias, new TensorParallelism.Split(3, cs, 3 * cs)) : null));
            attnProj = attn.registerModuleIn("c_proj", new Linear( // row-parallel: the input columns of those heads
                    sharder.shard("attn.c_proj.weight", full.attnProj.weight, new TensorParallelism.Split(c, cs, c, cs)), bias ? full.attnProj.bias : null));
            ln2 = registerModule("ln_2", copyOf(full.ln2, c, bias));
            Module mlp = registerModule("mlp", new Container());
            cFc = mlp.registerModuleIn("c_fc", new Linear(
                    sharder.shard("mlp.c_fc.weight", full.cFc.weight, new TensorParallelism.Split(1, fs * c, fs, c)),
                    bias ? sharder.shard("mlp.c_fc.bias", full.cFc.bias, new TensorParallelism.Split(1, fs, fs)) : null));
            mlpProj = mlp.registerModuleIn("c_proj", new Linear(
                    sharder.shard("mlp.c_proj.weight", full.mlpProj.weight, new TensorParallelism.Split(c, fs, c, fs)), bias ? full.mlpProj.bias : null));
            residDrop1 = attn.registerModuleIn("resid_dropout", new Dropout(cfg.dropout(), full.dropoutRng));
            residDrop2 = mlp.registerModuleIn("dropout", new Dropout(cfg.dropout(), full.dropoutRng));
            qkvScale = full.qkvScale == null ? null : qkvScale(cs, cfg.headSize(), full.qkvScale.dtype());
            this.dropoutRng = full.dropoutRng;
            this.tp = tp;
        }

        private static LayerNorm copyOf(LayerNorm src, int c, boolean bias) {
            LayerNorm ln = new LayerNorm(c, bias, src.weight.dtype());
            ln.weight.copyFrom(src.weight);
            if (bias) ln.bias.copyFrom(src.bias);
            return ln;
        }

        /** Under tensor parallelism f: the input of a column-parallel linear (its gradient is summed over the shards). */
        private Tensor toShards(Tensor x) {
            return tp == null ? x : tp.copyToShards(x);
        }

        /** {@code proj(x)}; under tensor parallelism row-parallel: the partial products summed over the shards (g), then the bias once. */
        private Tensor rowParallel(Linear proj, Tensor x) {
            if (tp == null) return proj.forward(x);
            Tensor y = tp.reduceFromShards(Linalg.linear(x, proj.weight, null));
            return proj.bias == null ? y : Arith.add(y, proj.bias);
        }

        private static Tensor qkvScale(int c, int d, DType dtype) {
            try (var s = MemoryScope.persistent()) {
                Tensor t = Tensor.full(1.0, dtype, 3 * c);
                for (int i = 0; i < c; i++) t.setFlat(i, 1.0 / Math.sqrt(d));
                return t;
            }
        }

        Tensor forward(Tensor x) {
            return forward(x, 1.0, Recompute.NONE);
        }

        /**
         * {@code branchScale} multiplies both residual branches (layer drop's 1/keep-probability); {@code recompute}
         * SELECTIVE recomputes the attention core and GELU + c_proj in backward (see {@link Recompute}).
         */
        Tensor forward(Tensor x, double branchScale, Recompute recompute) {
            boolean selective = recompute == Recompute.SELECTIVE;
            Tensor a = residDrop1.forward(attention(ln1.forward(x), selective));
            if (branchScale != 1.0) a = Arith.mul(a, branchScale);
            x = Arith.add(x, a);
            Tensor h = cFc.forward(toShards(ln2.forward(x)));
            // mlpProj may carry a LoRA adapter whose dropout draws from the model's generator: replayed on recompute
            Tensor m = residDrop2.forward(selective
                    ? Checkpoint.apply(in -> mlpProj.forward(Activations.gelu(in)), h, dropoutRng, mlpProj.parameters())
                    : rowParallel(mlpProj, Activations.gelu(h)));
            if (branchScale != 1.0) m = Arith.mul(m, branchScale);
            return Arith.add(x, m);
        }

        /** q, k, v = c_attn(x) split in heads; causal softmax(q·kᵀ/√D)·v (q·kᵀ/D under μP); heads merged; c_proj. */
        private Tensor attention(Tensor x, boolean recomputeCore) {
            Tensor qkv = cAttn.forward(toShards(x));
            if (qkvScale != null) qkv = Arith.mul(qkv, qkvScale);
            Tensor heads = recomputeCore
                    ? Checkpoint.apply(in -> Attention.causalSelfAttentionPacked(in, nHead), qkv, null, List.of())
                    : Attention.causalSelfAttentionPacked(qkv, nHead);
            return rowParallel(attnProj, heads);
        }

        private void copyFrom(Block src) {
            var mine = namedParameters();
            src.namedParameters().forEach((k, p) -> mine.get(k).copyFrom(p));
        }

        /** attn.c_proj and mlp.c_proj weights and biases to 0: both branches then output exactly 0. */
        private void zeroOutputProjections() {
            for (Linear l : List.of(attnProj, mlpProj)) {
                l.weight.fill(0);
                if (l.bias != null) l.bias.fill(0);
            }
        }
    }

    private static Linear linear(Rng rng, int out, int in, double std, boolean bias, DType dtype) {
        Tensor w = rng == null ? Tensor.zeros(dtype, out, in) : Tensor.randn(rng, std, dtype, out, in);
        return new Linear(w, bias ? Tensor.zeros(dtype, out) : null);
    }

    /** A named grouping with no computation of its own (HF's "transformer", "attn", "mlp", "h"). */
    private static final class Container extends Module {}
}
