package dev.kiln.cli;

import dev.kiln.KilnException;
import picocli.CommandLine;
import picocli.CommandLine.Command;

/** Entry point: `kiln <command>`. User errors print one line (stack trace with --debug). */
@Command(name = "kiln", mixinStandardHelpOptions = true, version = "kiln 0.1.0",
        description = "Efficient training of deep-learning models from Java.",
        subcommands = {TrainCommand.class, PrepareCommand.class, SampleCommand.class, EvalCommand.class, BenchCommand.class,
                BenchGemmCommand.class, GpuCheckCommand.class, PlotLrCommand.class, ReportCommand.class, CompareCommand.class, ExportCommand.class, ImportCommand.class, PlanCommand.class, CheckpointCommand.class})
public final class Main implements Runnable {

    @Override
    public void run() {
        new CommandLine(this).usage(System.out);
    }

    public static void main(String[] args) {
        int code = execute(args);
        // under mpirun: a rank that fails ends the whole job at once (the others would wait in a collective), otherwise MPI_Finalize
        if (code != 0) dev.kiln.dist.MpiProcessGroup.abortIfStarted("kiln: rank " + System.getenv("OMPI_COMM_WORLD_RANK") + " failed (exit code " + code + "); aborting all ranks");
        dev.kiln.dist.MpiProcessGroup.finish();
        System.exit(code);
    }

    /** Runs the CLI and returns the exit code (0 ok, 2 user error, 1 internal error). */
    public static int execute(String... args) {
        boolean debug = java.util.Arrays.asList(args).contains("--debug");
        CommandLine cl = new CommandLine(new Main());
        cl.setExecutionExceptionHandler((ex, cmd, parsed) -> {
            if (ex instanceof KilnException || ex.getCause() instanceof KilnException) {
                KilnException ke = ex instanceof KilnException k ? k : (KilnException) ex.getCause();
                System.err.println("kiln: error: " + ke.getMessage());
                if (debug) ke.printStackTrace();
                return 2;
            }
            System.err.println("kiln: internal error: " + ex);
            ex.printStackTrace();
            return 1;
        });
        return cl.execute(args);
    }
}
