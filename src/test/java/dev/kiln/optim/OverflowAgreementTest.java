package dev.kiln.optim;

import dev.kiln.nn.Parameter;
import dev.kiln.tensor.DType;
import dev.kiln.tensor.Tensor;
import org.junit.jupiter.api.Test;

import java.util.Map;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * ZeRO-2 under fp16: a rank whose own gradients are finite must still skip the step when another rank's overflowed
 * ({@link MixedPrecisionOptimizer#agreeOnOverflow}, DataParallel's vote), backing its scale off alike.
 */
class OverflowAgreementTest {
    private static MixedPrecisionOptimizer fp16(Parameter w) {
        return new MixedPrecisionOptimizer(new Sgd(ParamGroup.single(Map.of("w", w), 0), 0.0, false), Map.of("w", w), DType.F16,
                GradScaler.dynamic(1024, 2000));
    }

    private static void finiteGradient(Parameter w, double scale) {
        w.setGrad(Tensor.of(new float[]{(float) (0.5 * scale), (float) (-0.25 * scale)}, 2));
    }

    @Test
    void anotherRanksOverflowSkipsTheStepHere() {
        Parameter w = new Parameter(Tensor.of(new float[]{1f, 2f}, 2));
        MixedPrecisionOptimizer mp = fp16(w);
        mp.agreeOnOverflow(local -> true); // a peer found an inf
        mp.beginStep();
        finiteGradient(w, mp.lossScale());
        assertTrue(mp.endBackward(), "skipped although this rank's gradients are finite");
        assertEquals(512, mp.scaler().scale(), "the scale backed off as on the rank that overflowed");
        assertArrayEquals(new float[]{1f, 2f}, w.toFloatArray(), "the master weights are back");
    }

    @Test
    void noOverflowAnywhereSteps() {
        Parameter w = new Parameter(Tensor.of(new float[]{1f, 2f}, 2));
        MixedPrecisionOptimizer mp = fp16(w);
        boolean[] asked = {false};
        mp.agreeOnOverflow(local -> {
            asked[0] = true;
            return local;
        });
        mp.beginStep();
        finiteGradient(w, mp.lossScale());
        assertFalse(mp.endBackward());
        assertTrue(asked[0], "the vote is taken every step");
        assertEquals(1024, mp.scaler().scale());
        assertArrayEquals(new float[]{0.5f, -0.25f}, w.grad().toFloatArray(), "the gradient was unscaled");
    }
}
