package dev.kiln.dist;

import org.junit.jupiter.api.Assumptions;

import java.io.File;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;

/**
 * Starts a main class of the test classpath under {@code mpirun -np N} and collects its output. Tests that use it
 * skip (JUnit assumption) where mpirun is not installed; CI installs Open MPI, so there they run.
 */
final class MpiRun {
    record Result(int exitCode, String output, double seconds) {}

    private MpiRun() {}

    static Path mpirun() {
        for (String dir : System.getenv().getOrDefault("PATH", "/usr/bin").split(File.pathSeparator)) {
            Path p = Path.of(dir, "mpirun");
            if (Files.isExecutable(p)) return p;
        }
        return null;
    }

    static void assumeMpirun() {
        Assumptions.assumeTrue(mpirun() != null, "mpirun not installed (apt-get install openmpi-bin libopenmpi-dev)");
    }

    /** A job started by {@link #start}: its output so far is readable while it runs. */
    static final class Job {
        final Process process;
        final StringBuffer output = new StringBuffer();
        final long t0 = System.nanoTime();
        private final Thread reader;

        Job(Process p) {
            this.process = p;
            this.reader = Thread.ofPlatform().start(() -> {
                try (var in = new java.io.BufferedReader(new java.io.InputStreamReader(p.getInputStream(), StandardCharsets.UTF_8))) {
                    for (String line; (line = in.readLine()) != null; ) output.append(line).append('\n');
                } catch (IOException e) {
                    output.append("(output lost: ").append(e).append(")\n");
                }
            });
        }

        /** Waits up to {@code seconds} for a line containing {@code text}; false if the job ended or time ran out first. */
        boolean awaitOutput(String text, double seconds) throws InterruptedException {
            long end = System.nanoTime() + (long) (seconds * 1e9);
            while (System.nanoTime() < end) {
                if (output.indexOf(text) >= 0) return true;
                if (!process.isAlive()) return output.indexOf(text) >= 0;
                Thread.sleep(100);
            }
            return false;
        }

        /** Waits for the end (killing everything past {@code seconds}). */
        Result finish(double seconds) throws InterruptedException {
            if (!process.waitFor((long) (seconds * 1000), TimeUnit.MILLISECONDS)) {
                process.descendants().forEach(ProcessHandle::destroyForcibly);
                process.destroyForcibly();
                process.waitFor();
                reader.join();
                throw new AssertionError("mpirun did not finish within " + seconds + " s:\n" + output);
            }
            reader.join();
            return new Result(process.exitValue(), output.toString(), (System.nanoTime() - t0) / 1e9);
        }
    }

    /** Starts {@code mainClass args} on {@code np} ranks without waiting. */
    static Job start(int np, String mainClass, String... args) throws IOException {
        assumeMpirun();
        ProcessBuilder pb = new ProcessBuilder(command(np, mainClass, args)).redirectErrorStream(true);
        return new Job(pb.start());
    }

    private static List<String> command(int np, String mainClass, String... args) {
        String cp = System.getProperty("surefire.test.class.path", System.getProperty("java.class.path"));
        List<String> cmd = new ArrayList<>(List.of(mpirun().toString(), "--allow-run-as-root", "--oversubscribe", "--bind-to", "none",
                "-np", Integer.toString(np),
                Path.of(System.getProperty("java.home"), "bin", "java").toString(),
                "--enable-native-access=ALL-UNNAMED", "--add-modules", "jdk.incubator.vector", "-Xss8m", "-XX:+UseSerialGC",
                "-XX:TieredStopAtLevel=1", "-cp", cp, mainClass));
        cmd.addAll(List.of(args));
        return cmd;
    }

    /** Runs {@code mainClass args} on {@code np} ranks, killed after {@code timeoutSeconds}. */
    static Result run(int np, String mainClass, long timeoutSeconds, String... args) throws IOException, InterruptedException {
        assumeMpirun();
        ProcessBuilder pb = new ProcessBuilder(command(np, mainClass, args)).redirectErrorStream(true);
        long t0 = System.nanoTime();
        Process p = pb.start();
        byte[][] out = new byte[1][];
        Thread reader = Thread.ofPlatform().start(() -> {
            try {
                out[0] = p.getInputStream().readAllBytes();
            } catch (IOException e) {
                out[0] = ("(output lost: " + e + ")").getBytes(StandardCharsets.UTF_8);
            }
        });
        if (!p.waitFor(timeoutSeconds, TimeUnit.SECONDS)) {
            p.descendants().forEach(ProcessHandle::destroyForcibly);
            p.destroyForcibly();
            p.waitFor();
            reader.join();
            throw new AssertionError("mpirun -np " + np + " " + mainClass + " did not finish within " + timeoutSeconds + " s:\n"
                    + new String(out[0], StandardCharsets.UTF_8));
        }
        reader.join();
        return new Result(p.exitValue(), new String(out[0], StandardCharsets.UTF_8), (System.nanoTime() - t0) / 1e9);
    }
}
