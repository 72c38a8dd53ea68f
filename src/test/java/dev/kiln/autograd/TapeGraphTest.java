package dev.kiln.autograd;

import dev.kiln.ops.Activations;
import dev.kiln.ops.Arith;
import dev.kiln.ops.Linalg;
import dev.kiln.ops.Reduce;
import dev.kiln.tensor.DType;
import dev.kiln.tensor.Rng;
import dev.kiln.tensor.Tensor;
import org.junit.jupiter.api.Test;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * {@link Tape#take}: a graph recorded per micro-batch, its backward run later from a given output gradient, as a
 * pipeline stage does. Two "stages" (gelu(x·W1ᵀ), then the mean of (h·W2ᵀ)²) over two micro-batches, each stage's
 * graph taken off the tape, backwards run in another order than the forwards, the stage boundary crossed by a leaf
 * copy of the activation and its gradient: the weights' gradients equal those of one backward of the whole batch's
 * mean loss. fp64, so equal to 1e-12 (only the summation order differs).
 */
class TapeGraphTest {
    static Tensor stage1(Tensor x, Tensor w1) {
        return Activations.gelu(Linalg.linear(x, w1, null));
    }

    static Tensor stage2(Tensor h, Tensor w2) {
        Tensor y = Linalg.linear(h, w2, null);
        return Reduce.mean(Arith.mul(y, y));
    }

    @Test
    void graphsPerMicroBatchGiveTheGradientsOfOneBackward() {
        Rng rng = new Rng(7);
        Tensor w1 = Tensor.randn(rng, 0.5, DType.F64, 5, 3).requiresGrad(true);
        Tensor w2 = Tensor.randn(rng, 0.5, DType.F64, 2, 5).requiresGrad(true);
        Tensor[] x = {Tensor.randn(rng, 1, DType.F64, 4, 3), Tensor.randn(rng, 1, DType.F64, 4, 3)};

        // reference: the mean over both micro-batches, one backward
        Tensor whole = Arith.mul(Arith.add(stage2(stage1(x[0], w1), w2), stage2(stage1(x[1], w1), w2)), 0.5);
        Tape.backward(whole);
        double[] g1 = w1.grad().toDoubleArray(), g2 = w2.grad().toDoubleArray();
        w1.setGrad(null);
        w2.setGrad(null);

        // pipelined: forwards F0 F1 on both stages, each stage's graph taken off the tape
        Tape.Graph[] first = new Tape.Graph[2], second = new Tape.Graph[2];
        Tensor[] h = new Tensor[2], hIn = new Tensor[2], loss = new Tensor[2];
        for (int i = 0; i < 2; i++) {
            h[i] = stage1(x[i], w1);
            first[i] = Tape.take();
            assertEquals(0, Tape.size(), "take() leaves the tape empty");
            assertTrue(first[i].size() > 0);
            hIn[i] = h[i].copy().requiresGrad(true); // what the next stage receives: a leaf
            loss[i] = Arith.mul(stage2(hIn[i], w2), 0.5);
            second[i] = Tape.take();
        }
        for (int i : new int[]{1, 0}) { // backwards later, in another order
            second[i].backward(loss[i], Tensor.full(1.0, DType.F64, loss[i].shape()));
            first[i].backward(h[i], hIn[i].grad());
            assertEquals(0, first[i].size(), "a graph runs once");
        }
        assertArrayEquals(g1, w1.grad().toDoubleArray(), 1e-12);
        assertArrayEquals(g2, w2.grad().toDoubleArray(), 1e-12);
        assertThrows(IllegalStateException.class, () -> first[0].backward(h[0], hIn[0].grad()));
        assertEquals(0, Tape.size());
    }

    @Test
    void aDroppedGraphRunsNothingAndTapeBackwardStillWorks() {
        Tensor w = Tensor.ofDoubles(new double[]{1, 2}, 2).requiresGrad(true);
        Reduce.sum(Arith.mul(w, w));
        Tape.Graph g = Tape.take();
        g.drop();
        assertEquals(0, g.size());
        assertEquals(null, w.grad());
        Tape.backward(Reduce.sum(Arith.mul(w, 3.0)));
        assertArrayEquals(new double[]{3, 3}, w.grad().toDoubleArray());
    }
}
