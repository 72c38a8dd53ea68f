package dev.kiln.cli;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import dev.kiln.KilnException;
import dev.kiln.train.SmallRuns;
import org.junit.jupiter.api.Test;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

class PlanCommandTest {
    private static final String[] MODEL = {"--set", "model.n_layer=2", "--set", "model.n_head=2", "--set", "model.n_embd=64",
            "--set", "model.block_size=64", "--set", "model.vocab_size=65", "--set", "train.batch_size=4"};

    private static String[] args(String... more) {
        String[] out = new String[1 + MODEL.length + more.length];
        out[0] = "plan";
        System.arraycopy(MODEL, 0, out, 1, MODEL.length);
        System.arraycopy(more, 0, out, 1 + MODEL.length, more.length);
        return out;
    }

    @Test
    void sizesParseInBinaryAndDecimalUnits() {
        assertEquals(80L << 30, PlanCommand.parseSize("80GiB"));
        assertEquals(16_000_000_000L, PlanCommand.parseSize("16GB"));
        assertEquals(1536L << 20, PlanCommand.parseSize("1.5 GiB"));
        assertEquals(4096, PlanCommand.parseSize("4096"));
        KilnException e = assertThrows(KilnException.class, () -> PlanCommand.parseSize("eighty gigs"));
        assertTrue(e.getMessage().contains("--device-memory"), e.getMessage());
    }

    @Test
    void jsonListsEveryCombinationAndWhichFit() throws Exception {
        JsonNode everything = new ObjectMapper().readTree(SmallRuns.cli(args("--json", "--device-memory", "1TiB")).out());
        long min = Long.MAX_VALUE, max = 0;
        for (JsonNode row : everything.path("combinations")) {
            min = Math.min(min, row.path("peak_total").asLong());
            max = Math.max(max, row.path("peak_total").asLong());
        }
        long device = (min + max) / 2;
        SmallRuns.Cli r = SmallRuns.cli(args("--json", "--device-memory", Long.toString(device)));
        assertEquals(0, r.code(), r.err());
        JsonNode root = new ObjectMapper().readTree(r.out());
        assertEquals(device, root.path("device_memory").asLong());
        JsonNode rows = root.path("combinations");
        // recompute 3 × micro-batches 4, 2, 1 × state options 6 (fp32 / 8-bit, each resident, optimizer offload, + parameter offload)
        assertEquals(3 * 3 * 6, rows.size());
        boolean someFit = false, someDoNot = false;
        double lastCost = 0;
        for (JsonNode row : rows) {
            assertEquals(row.path("peak_total").asLong() <= device, row.path("fits").asBoolean());
            someFit |= row.path("fits").asBoolean();
            someDoNot |= !row.path("fits").asBoolean();
            assertEquals(4, row.path("micro_batch").asInt() * row.path("grad_accum_steps").asInt(), "same tokens per step");
            assertTrue(row.path("relative_cost").asDouble() >= lastCost, "cheapest first");
            lastCost = row.path("relative_cost").asDouble();
        }
        assertTrue(someFit && someDoNot, "a device between the smallest and the largest combination");
        JsonNode own = root.path("config");
        JsonNode same = null;
        for (JsonNode row : rows)
            if (row.path("recompute").asText().equals("none") && row.path("micro_batch").asInt() == 4 && row.path("state").asText().equals("fp32")) same = row;
        assertEquals(own.path("peak_total").asLong(), same.path("peak_total").asLong(), "the config's own row is its prediction");
        assertTrue(same.path("implemented").asBoolean());
    }

    /** A Llama config plans (it was refused): rows over micro-batches and fp32 / 8-bit state only, as Llama trains without recompute or offload. */
    @Test
    void llamaPlansOverAccumulationAndStatePrecision() throws Exception {
        SmallRuns.Cli r = SmallRuns.cli(args("--json", "--set", "model.arch=llama", "--set", "model.n_kv_head=1", "--set", "model.dropout=0",
                "--set", "model.bias=false"));
        assertEquals(0, r.code(), r.err());
        JsonNode root = new ObjectMapper().readTree(r.out());
        assertTrue(root.path("shape").path("llama").asBoolean());
        JsonNode rows = root.path("combinations");
        assertEquals(3 * 2, rows.size());
        for (JsonNode row : rows) {
            assertEquals("none", row.path("recompute").asText());
            assertTrue(row.path("implemented").asBoolean(), row.toString());
        }
        SmallRuns.Cli table = SmallRuns.cli(args("--set", "model.arch=llama", "--set", "model.dropout=0", "--set", "model.bias=false"));
        assertTrue(table.out().contains("kiln plan: Llama 2 layers"), table.out());
    }

    @Test
    void tableNamesTheConfigAndTheRowsThatFit() {
        SmallRuns.Cli r = SmallRuns.cli(args("--device-memory", "1GiB"));
        assertEquals(0, r.code(), r.err());
        assertTrue(r.out().contains("activations") && r.out().contains("fits") && r.out().contains("full"), r.out());
        SmallRuns.Cli none = SmallRuns.cli(args("--device-memory", "1MiB"));
        assertTrue(none.out().contains("none fits"), none.out());
        SmallRuns.Cli bad = SmallRuns.cli(args("--device-memory", "lots"));
        assertFalse(bad.code() == 0);
        assertTrue(bad.err().contains("--device-memory"), bad.err());
    }
}
