package dev.kiln.dist;

import dev.kiln.train.Trainer;
import dev.kiln.train.config.ConfigLoader;

import java.io.PrintStream;
import java.util.Arrays;

/**
 * Run under mpirun by the data-parallel tests: trains the config given as {@code key=value} arguments and prints,
 * from every rank, "LOSSES <rank> <loss> <loss> …" (each rank holds the global batch's loss) and the rank's
 * measured memory ("MEMORY <rank> <param bytes> <grad bytes> <optimizer state bytes>").
 */
public final class DistTrainMain {
    public static void main(String[] args) {
        // (also written to runs/<name>/result-rank<R>.txt)
        boolean resume = Arrays.asList(args).contains("--resume");
        int worldRank = Integer.parseInt(System.getenv().getOrDefault("OMPI_COMM_WORLD_RANK", "0"));
        // --overflow-rank=R: faults.overflow_steps injects on world rank R only (the others drop the setting), as an
        // overflow that one shard's or one data-parallel slice's gradients hit while the other ranks' stay finite
        String overflowRank = Arrays.stream(args).filter(a -> a.startsWith("--overflow-rank=")).map(a -> a.substring(16)).findFirst().orElse(null);
        var cfg = ConfigLoader.load(null, Arrays.stream(args).filter(a -> !a.startsWith("--"))
                .filter(a -> overflowRank == null || Integer.parseInt(overflowRank) == worldRank || !a.startsWith("faults.overflow_steps=")).toList());
        // --stall=R@S: rank R stops (sleeps) before step S, as a stuck rank would; the others must time out, not hang
        String stall = Arrays.stream(args).filter(a -> a.startsWith("--stall=")).map(a -> a.substring(8)).findFirst().orElse(null);
        System.out.println("PID " + worldRank + " " + ProcessHandle.current().pid());
        Trainer trainer = new Trainer(cfg, resume, new PrintStream(System.out), false);
        trainer.observeBatches((step, batch) -> {
            if (step == 2) System.out.println("TRAINING " + worldRank);
            if (stall != null && Integer.parseInt(stall.split("@")[0]) == worldRank && step == Long.parseLong(stall.split("@")[1])) {
                try {
                    Thread.sleep(Long.MAX_VALUE);
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                }
            }
        });
        Trainer.Result r = trainer.run();
        int rank = ProcessGroup.world().rank();
        StringBuilder sb = new StringBuilder("LOSSES " + rank);
        for (double l : r.losses()) sb.append(' ').append(l);
        System.out.println(sb);
        var m = r.memory();
        String memory = "MEMORY " + rank + " " + m.parameterBytes() + " " + m.gradientBytes() + " " + m.optimizerStateBytes();
        System.out.println(memory);
        // tensor parallel: a checksum of the replicated parameters, which must stay bit-identical on every shard
        TensorParallel tp = TensorParallel.active();
        if (tp != null && DataParallel.active() != null) DataParallel.active().gatherAllParameters(); // ZeRO-3: whole shards (collective)
        String replicated = tp == null ? "" : "REPLICATED " + rank + " " + tp.rank() + " " + replicatedChecksum(tp) + "\n";
        // a resharding load on resume: bytes copied out of the rank files, bytes of the pieces checked, this rank's share
        var load = dev.kiln.train.ShardedLoad.lastLoad();
        String loaded = load == null ? "" : "LOADED " + rank + " " + load.bytesRead() + " " + load.bytesChecked() + " " + load.share() + " " + load.filesRead() + "\n";
        DataParallel dpActive = DataParallel.active();
        String comm = dpActive == null ? "" : "COMM " + rank + " " + dpActive.group().stats() + "\n";
        // the ranks share mpirun's stdout, where lines can interleave mid-line: the test reads these files instead
        try {
            java.nio.file.Files.writeString(r.runDir().resolve("result-rank" + rank + ".txt"), sb + "\n" + memory + "\n" + replicated + comm + loaded);
        } catch (java.io.IOException e) {
            throw new java.io.UncheckedIOException(e);
        }
        DataParallel dp = DataParallel.active();
        if (dp != null) System.out.println("COMM " + rank + " " + dp.group().stats());
        if (tp != null) System.out.println("TP COMM " + rank + " " + tp.stats());
        System.out.flush();
        MpiProcessGroup.finish();
    }

    /** CRC-32 of the raw bits of every parameter that is not a tensor-parallel shard, in model order. */
    private static long replicatedChecksum(TensorParallel tp) {
        var crc = new java.util.zip.CRC32();
        PipelineParallel pipe = PipelineParallel.active(); // tp × pp: this stage's parameters (the others are evicted)
        var held = pipe == null ? null : java.util.Set.copyOf(pipe.parameters().values());
        for (var p : tp.model().parameters()) {
            if (tp.isSharded(p) || held != null && !held.contains(p)) continue;
            for (float v : p.toFloatArray()) {
                int bits = Float.floatToRawIntBits(v);
                crc.update(new byte[]{(byte) bits, (byte) (bits >> 8), (byte) (bits >> 16), (byte) (bits >> 24)});
            }
        }
        return crc.getValue();
    }
}
