// Optimizer step time of adamw vs adamw8bit on 12 tensors of 256x256 (786,432 parameters), alternating twice; each
// pair ends with the ratio adamw8bit / adamw.
// Run after a build: java --enable-native-access=ALL-UNNAMED --add-modules jdk.incubator.vector -cp target/classes bench/AdamW8bitStep.java <threads>
import dev.kiln.nn.Parameter;
import dev.kiln.optim.*;
import dev.kiln.tensor.Tensor;
import dev.kiln.backend.cpu.CpuBackend;
import java.util.*;

public class AdamW8bitStep {
    public static void main(String[] a) {
        CpuBackend.configure(Integer.parseInt(a[0]));
        double adamwMs = 0;
        for (String kind : List.of("adamw", "adamw8bit", "adamw", "adamw8bit")) {
            LinkedHashMap<String, Parameter> ps = new LinkedHashMap<>();
            SplittableRandom r = new SplittableRandom(1);
            for (int i = 0; i < 12; i++) {
                float[] w = new float[65536]; for (int j = 0; j < w.length; j++) w[j] = (float) r.nextGaussian() * 0.02f;
                Parameter p = new Parameter(Tensor.of(w, 256, 256));
                float[] g = new float[65536]; for (int j = 0; j < g.length; j++) g[j] = (float) r.nextGaussian() * 0.01f;
                p.setGrad(Tensor.of(g, 256, 256));
                ps.put("p" + i, p);
            }
            var groups = ParamGroup.standard(ps, 0.1, 0);
            Optimizer o = kind.equals("adamw") ? new AdamW(groups, 0.9, 0.99, 1e-8) : new AdamW8bit(groups, 0.9, 0.99, 1e-8);
            for (int i = 0; i < 20; i++) o.step(1e-3);
            long t0 = System.nanoTime();
            int n = 50;
            for (int i = 0; i < n; i++) o.step(1e-3);
            double ms = (System.nanoTime() - t0) / 1e6 / n;
            System.out.printf("%s: %.2f ms/step for %d params (%.1f ns/param)%n", kind, ms, 12 * 65536, ms * 1e6 / (12 * 65536));
            if (kind.equals("adamw")) adamwMs = ms;
            else System.out.printf("ratio adamw8bit / adamw: %.1f%n", ms / adamwMs);
        }
    }
}
