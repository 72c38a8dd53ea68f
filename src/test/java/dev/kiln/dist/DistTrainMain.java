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
        boolean resume = Arrays.asList(args).contains("--resume");
        var cfg = ConfigLoader.load(null, Arrays.stream(args).filter(a -> !a.equals("--resume")).toList());
        Trainer.Result r = new Trainer(cfg, resume, new PrintStream(System.out), false).run();
        int rank = ProcessGroup.world().rank();
        StringBuilder sb = new StringBuilder("LOSSES " + rank);
        for (double l : r.losses()) sb.append(' ').append(l);
        System.out.println(sb);
        var m = r.memory();
        System.out.println("MEMORY " + rank + " " + m.parameterBytes() + " " + m.gradientBytes() + " " + m.optimizerStateBytes());
        DataParallel dp = DataParallel.active();
        if (dp != null) System.out.println("COMM " + rank + " " + dp.group().stats());
        System.out.flush();
        MpiProcessGroup.finish();
    }
}
