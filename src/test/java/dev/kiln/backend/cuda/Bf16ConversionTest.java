package dev.kiln.backend.cuda;

import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * kiln_emu.h's bf16 conversions against CUDA's own: cuda_bf16.h also compiles for the host (its
 * software path), so a small program links both and compares bits — float → bf16 for every upper
 * half-word (all signs, exponents, mantissas, NaNs and infinities) combined with the low half-words
 * that decide rounding (0, 1, just below/at/above the tie, all ones, and others), and bf16 → float
 * for all 65536 values. On sm_80+ CUDA converts with cvt.rn.bf16.f32, which the header's software
 * path is documented to match; the hardware itself is not run here. Skips without g++ or the CUDA
 * headers (/usr/local/cuda/include or $CUDA_HOME/include).
 */
class Bf16ConversionTest {
    @Test
    void emulatedConversionsAreBitwiseCudas(@TempDir Path dir) throws IOException {
        String gxx = KernelToolchain.gxx();
        Path include = null;
        for (String home : new String[]{System.getenv("CUDA_HOME"), "/usr/local/cuda"})
            if (home != null && Files.exists(Path.of(home, "include", "cuda_bf16.h"))) include = Path.of(home, "include");
        org.junit.jupiter.api.Assumptions.assumeTrue(include != null, "cuda_bf16.h not found: bf16 bit-compatibility check skipped");
        KernelToolchain.writeSources(dir);
        Files.writeString(dir.resolve("cuda_side.cpp"), """
                #include <cuda_bf16.h>
                extern "C" unsigned short cuda_f2bf(float f) { __nv_bfloat16_raw r = __float2bfloat16(f); return r.x; }
                extern "C" float cuda_bf2f(unsigned short x) { __nv_bfloat16_raw r; r.x = x; return __bfloat162float(__nv_bfloat16(r)); }
                """);
        Files.writeString(dir.resolve("kiln_side.cpp"), """
                #include "kiln_emu.h"
                #include <cstdio>
                extern "C" unsigned short cuda_f2bf(float f);
                extern "C" float cuda_bf2f(unsigned short x);
                int main() {
                    const unsigned lows[] = {0x0000, 0x0001, 0x3fff, 0x7fff, 0x8000, 0x8001, 0xbfff, 0xffff, 0x1234, 0x9abc, 0x7ffe, 0x8002};
                    long checked = 0, bad = 0;
                    for (unsigned hi = 0; hi < 0x10000; hi++)
                        for (unsigned lo : lows) {
                            float f = __uint_as_float((hi << 16) | lo);
                            if (__float2bfloat16(f).__x != cuda_f2bf(f)) bad++;
                            checked++;
                        }
                    for (unsigned b = 0; b < 0x10000; b++) {
                        if (__float_as_uint(__bfloat162float(__nv_bfloat16{(unsigned short) b})) != __float_as_uint(cuda_bf2f((unsigned short) b))) bad++;
                        checked++;
                    }
                    std::printf("checked %ld mismatches %ld\\n", checked, bad);
                    return bad == 0 ? 0 : 1;
                }
                """);
        KernelToolchain.Result build = KernelToolchain.run(dir, List.of(gxx, "-std=c++17", "-O2", "-I" + include, "cuda_side.cpp", "kiln_side.cpp", "-pthread", "-o", "bf16check"));
        assertEquals(0, build.exit(), "build failed:\n" + build.output());
        KernelToolchain.Result r = KernelToolchain.run(dir, List.of(dir.resolve("bf16check").toString()));
        assertTrue(r.output().contains("checked 851968 mismatches 0"), r.output());
        assertEquals(0, r.exit(), r.output());
    }
}
