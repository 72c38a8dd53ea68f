package dev.kiln.cli;

import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import dev.kiln.AtomicFile;
import dev.kiln.hf.Gpt2Spec;
import dev.kiln.hf.HfDirectory;
import dev.kiln.hf.HfInterchange;
import dev.kiln.nn.models.Gpt;
import dev.kiln.nn.models.GptHfFormat;
import dev.kiln.tensor.MemoryScope;
import dev.kiln.tensor.Safetensors;
import dev.kiln.tensor.Tensor;
import dev.kiln.train.TrainingException;
import dev.kiln.train.config.LoraConfig;
import picocli.CommandLine.ArgGroup;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.concurrent.Callable;

/**
 * Writes a run's latest weights for use elsewhere: a plain HF GPT-2 model.safetensors (LoRA adapters merged
 * in: W + (α/r)·B·A), PEFT's adapter-only file plus adapter_config.json, or int8 weights with fp32
 * per-channel scales (the exact weights a QAT run trained against).
 */
@Command(name = "export", description = "Export a run's latest checkpoint: merged HF GPT-2 safetensors (default), LoRA adapters only (PEFT layout), or int8 weights.")
final class ExportCommand implements Callable<Integer> {
    @Option(names = "--run", required = true, paramLabel = "DIR", description = "run directory (runs/<name>) or one checkpoint directory")
    Path run;

    @Option(names = "--out", required = true, paramLabel = "FILE", description = "the .safetensors file to write (--adapter-only also writes adapter_config.json beside it; --hf: the directory)")
    Path out;

    @ArgGroup(exclusive = true)
    Mode mode = new Mode();

    static final class Mode {
        @Option(names = "--merged", description = "HF GPT-2 layout with LoRA adapters merged into the base weights (the default)")
        boolean merged;
        @Option(names = "--adapter-only", description = "only the LoRA adapters, PEFT names (base_model.model.<module>.lora_A.weight …) + adapter_config.json")
        boolean adapterOnly;
        @Option(names = "--hf", description = "a Hugging Face model directory at --out: model.safetensors (HF names, fp32, LoRA merged) + config.json + generation_config.json, for transformers' from_pretrained")
        boolean hf;
        @Option(names = "--int8", description = "Linear weights as int8 codes + fp32 per-channel <name>_scale (qat.bits of the run, else 8), the rest fp32")
        boolean int8;
    }

    @Option(names = "--debug", description = "print stack traces of errors")
    boolean debug;

    @Override
    public Integer call() {
        try {
            return export();
        } catch (IOException e) {
            throw new TrainingException("cannot write " + out + ": " + e.getMessage(), e);
        }
    }

    private int export() throws IOException {
        RunCheckpoint rc = RunCheckpoint.load(run);
        if (mode != null && mode.hf) return exportHf(rc);
        if (!(rc.model() instanceof Gpt gpt))
            throw new TrainingException(rc.checkpoint() + ": kiln export writes HF GPT-2 layouts, and this run is a " + rc.model().describe()
                    + "; its checkpoint's " + dev.kiln.train.CheckpointStore.MODEL_FILE + " already holds HF LlamaForCausalLM names");
        boolean adapterOnly = mode != null && mode.adapterOnly, int8 = mode != null && mode.int8;
        LoraConfig lora = rc.config().lora();
        Path parent = out.toAbsolutePath().getParent();
        if (parent != null) Files.createDirectories(parent);
        try (var scope = MemoryScope.open()) {
            Map<String, Tensor> tensors;
            Map<String, String> meta = new LinkedHashMap<>();
            meta.put("format", "pt");
            String what;
            if (adapterOnly) {
                if (lora.rank() == 0)
                    throw new TrainingException(rc.checkpoint() + ": the run has no LoRA adapters (lora.rank 0); export it without --adapter-only");
                tensors = GptHfFormat.exportAdapters(gpt);
                writeAdapterConfig(out.resolveSibling("adapter_config.json"), lora);
                what = "LoRA adapters (rank " + lora.rank() + ", alpha " + lora.alpha() + ") + adapter_config.json";
            } else if (int8) {
                int bits = rc.config().qat().enabled() ? rc.config().qat().bits() : 8;
                tensors = GptHfFormat.exportInt8(gpt, bits);
                meta.put("quantization", "symmetric int" + bits + " per output channel: weight = code * <name>" + GptHfFormat.SCALE_SUFFIX);
                what = "int" + bits + " Linear weights + fp32 scales" + (rc.config().qat().weights() ? " (the weights the QAT run used)" : " (post-training quantisation)");
            } else {
                tensors = GptHfFormat.exportMerged(gpt);
                what = lora.rank() > 0 ? "HF GPT-2 weights, LoRA merged" : "HF GPT-2 weights";
            }
            Safetensors.write(out, tensors, meta);
            System.out.printf("kiln: wrote %s: %s, %d tensors, %,d bytes (from %s)%n", out, what, tensors.size(), Files.size(out), rc.checkpoint());
        }
        return 0;
    }

    /** kiln export --hf: a directory transformers' AutoModelForCausalLM.from_pretrained loads. */
    private int exportHf(RunCheckpoint rc) throws IOException {
        if (Files.isRegularFile(out)) throw new TrainingException("--out " + out + " is a file; --hf writes a directory");
        try (var scope = MemoryScope.open()) {
            // GPT-2 BPE's <|endoftext|> is its bos/eos; a char vocabulary has none
            Integer bos = "gpt2".equals(rc.config().data().tokenizer()) ? Gpt2Spec.GPT2_EOT : null;
            // LLAMA HOOK: a Llama checkpoint exports through HfInterchange.fromLlama instead
            if (!(rc.model() instanceof Gpt gpt)) throw new TrainingException(rc.checkpoint() + ": kiln export --hf is wired for GPT-2 only so far");
            HfDirectory.HfModel hf = HfInterchange.fromGpt(gpt, bos);
            HfDirectory.write(out, hf.spec(), hf.tensors());
            System.out.printf("kiln: wrote %s: %s (%s, %d tensors, fp32%s) + %s + %s (from %s)%n", out.resolve(HfDirectory.WEIGHTS), hf.spec().architecture(),
                    rc.config().lora().rank() > 0 ? "LoRA merged" : "HF names", hf.tensors().size(), bos != null ? ", GPT-2 BPE vocabulary" : ", Kiln char vocabulary",
                    HfDirectory.CONFIG, HfDirectory.GENERATION, rc.checkpoint());
            if (rc.config().qat().enabled())
                System.out.println("kiln: note: a QAT run; these are its fp32 weights (kiln export --int8 writes the quantised ones it trained against)");
        }
        return 0;
    }

    /** PEFT's adapter_config.json: what PeftModel.from_pretrained needs (GPT-2's Conv1D is fan_in_fan_out). */
    private static void writeAdapterConfig(Path file, LoraConfig lora) throws IOException {
        ObjectMapper json = new ObjectMapper();
        ObjectNode c = json.createObjectNode();
        c.put("peft_type", "LORA");
        c.put("task_type", "CAUSAL_LM");
        c.put("base_model_name_or_path", lora.init_from());
        c.put("r", lora.rank());
        c.put("lora_alpha", lora.alpha());
        c.put("lora_dropout", lora.dropout());
        var targets = c.putArray("target_modules");
        lora.targetList().forEach(targets::add);
        c.put("fan_in_fan_out", true);
        c.put("bias", "none");
        c.put("init_lora_weights", true);
        c.put("inference_mode", true);
        byte[] bytes = (json.writerWithDefaultPrettyPrinter().writeValueAsString(c) + "\n").getBytes(StandardCharsets.UTF_8);
        AtomicFile.write(file, ch -> ch.write(ByteBuffer.wrap(bytes)));
    }
}
