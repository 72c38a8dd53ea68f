package dev.kiln.cli;

import dev.kiln.data.Corpus;
import dev.kiln.data.DataException;
import dev.kiln.data.Dedup;
import dev.kiln.data.PreparedData;
import dev.kiln.data.TokenShard;
import dev.kiln.data.WindowScores;
import dev.kiln.train.WindowScoring;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;
import picocli.CommandLine.Parameters;

import java.nio.file.Path;
import java.util.concurrent.Callable;

@Command(name = "prepare", description = "Tokenize a text file into train/val shards (llm.c .bin format) and tokenizer.json; "
        + "optionally remove duplicate documents first, and/or score train.bin's windows for a difficulty curriculum.")
final class PrepareCommand implements Callable<Integer> {
    @Parameters(index = "0", arity = "0..1", paramLabel = "TEXT", description = "UTF-8 text file (may be left out with --score on an already prepared --out)")
    Path text;

    @Option(names = "--tokenizer", defaultValue = "char", description = "char or gpt2 (default: ${DEFAULT-VALUE})")
    String tokenizer;

    @Option(names = "--out", required = true, paramLabel = "DIR", description = "output directory")
    Path out;

    @Option(names = "--dedup", defaultValue = "none", paramLabel = "MODE",
            description = "remove duplicate documents (blank-line-separated blocks) first: none, exact or minhash (exact + near duplicates, Jaccard >= 0.8) (default: ${DEFAULT-VALUE})")
    String dedup;

    @Option(names = "--score", paramLabel = "RUN", description = "score every block_size window of train.bin by its mean loss under this run's "
            + "latest checkpoint (or this checkpoint directory) and write DIR/" + WindowScores.FILE)
    Path score;

    @Option(names = "--score-batch", defaultValue = "32", paramLabel = "N", description = "windows per forward pass when scoring (default: ${DEFAULT-VALUE})")
    int scoreBatch;

    @Option(names = "--debug", description = "print stack traces of errors")
    boolean debug;

    @Override
    public Integer call() {
        if (!Dedup.MODES.contains(dedup))
            throw new DataException("--dedup must be one of " + String.join(", ", Dedup.MODES) + ", got \"" + dedup + "\"");
        PreparedData d;
        if (text != null) {
            d = Corpus.prepare(text, tokenizer, out, dedup);
            System.out.printf("kiln: %s → %s: %,d train + %,d val tokens, vocabulary %d (%s)%n", text, d.dir(),
                    d.trainTokens(), d.valTokens(), d.tokenizer().vocabSize(), d.tokenizer().kind());
            Dedup.Report.read(out).ifPresent(r -> System.out.println("kiln: " + r.summary()));
        } else if (score != null && Corpus.isPrepared(out)) {
            d = Corpus.open(out);
        } else {
            throw new DataException(score == null ? "kiln prepare needs a TEXT file" : "--out " + out + " is not a prepared directory; give the TEXT file to prepare it");
        }
        if (score != null) {
            if (scoreBatch <= 0) throw new DataException("--score-batch must be positive, got " + scoreBatch);
            RunCheckpoint rc = RunCheckpoint.load(score);
            if (!rc.tokenizer().equals(d.tokenizer()))
                throw new DataException("--score " + score + ": the reference run's tokenizer (" + rc.tokenizer() + ") is not " + d.tokenizerPath()
                        + " (" + d.tokenizer() + "); prepare the data with the reference run's corpus and tokenizer");
            long t0 = System.nanoTime();
            try (TokenShard train = d.openTrain()) {
                Path file = WindowScoring.scoreAndWrite(rc.model(), train, scoreBatch, System.out);
                float[] s = WindowScores.read(file).scores();
                double mean = 0, min = Double.POSITIVE_INFINITY, max = Double.NEGATIVE_INFINITY;
                for (float v : s) {
                    mean += v / s.length;
                    min = Math.min(min, v);
                    max = Math.max(max, v);
                }
                System.out.printf("kiln: scored %,d windows of %d tokens of %s under %s in %.1f s: mean loss %.4f (min %.4f, max %.4f) → %s%n",
                        s.length, rc.model().blockSize(), train.path(), rc.checkpoint(), (System.nanoTime() - t0) / 1e9, mean, min, max, file);
            }
        }
        return 0;
    }
}
