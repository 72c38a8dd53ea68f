package dev.kiln.backend.cuda;

import dev.kiln.backend.cuda.CudaLibraries.Library;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeFalse;

/** Library discovery over fake file-system trees: empty files named like the libraries, under a temp root. */
class CudaLibrariesTest {
    @TempDir
    Path tmp;

    private Path lib(String dir, String soname) throws IOException {
        Path d = tmp.resolve(dir.replaceFirst("^/", ""));
        Files.createDirectories(d);
        return Files.createFile(d.resolve(soname));
    }

    private CudaLibraries search(Map<String, String> env) {
        return new CudaLibraries(env, tmp);
    }

    @Test
    void kilnCudaHomeComesFirstThenCudaHomeThenToolkit() throws IOException {
        Path toolkit = lib("/usr/local/cuda/targets/x86_64-linux/lib", "libcublas.so.13");
        Path cudaHome = lib("/opt/cudahome/lib64", "libcublas.so.13");
        Path kiln = lib("/opt/mine", "libcublas.so.13");
        Map<String, String> env = new HashMap<>();
        assertEquals(toolkit, search(env).find(Library.CUBLAS).orElseThrow());
        env.put("CUDA_HOME", tmp.resolve("opt/cudahome").toString());
        assertEquals(cudaHome, search(env).find(Library.CUBLAS).orElseThrow());
        env.put("KILN_CUDA_HOME", tmp.resolve("opt/mine").toString());
        assertEquals(kiln, search(env).find(Library.CUBLAS).orElseThrow());
    }

    @Test
    void versionedToolkitsNewestFirstAndCuda13BeforeCuda12InOneFolder() throws IOException {
        lib("/usr/local/cuda-12.9/lib64", "libnvrtc.so.12");
        Path newest = lib("/usr/local/cuda-12.10/lib64", "libnvrtc.so.12");
        assertEquals(newest, search(Map.of()).find(Library.NVRTC).orElseThrow());
        Path thirteen = lib("/usr/local/cuda-12.10/lib64", "libnvrtc.so.13");
        assertEquals(thirteen, search(Map.of()).find(Library.NVRTC).orElseThrow());
    }

    @Test
    void driverInSystemFoldersAndLibrariesInPythonWheels() throws IOException {
        Path driver = lib("/usr/lib", "libcuda.so.1");
        Path wheel = lib("/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib", "libcublasLt.so.13");
        Path wheel12 = lib("/usr/local/lib/python3.11/dist-packages/nvidia/cuda_nvrtc/lib", "libnvrtc.so.12");
        CudaLibraries s = search(Map.of());
        assertEquals(driver, s.find(Library.DRIVER).orElseThrow());
        assertEquals(wheel, s.find(Library.CUBLASLT).orElseThrow());
        assertEquals(wheel12, s.find(Library.NVRTC).orElseThrow());
        // the system folder is searched before the wheels
        Path multiarch = lib("/usr/lib/x86_64-linux-gnu", "libcublasLt.so.13");
        assertEquals(multiarch, search(Map.of()).find(Library.CUBLASLT).orElseThrow());
    }

    @Test
    void virtualEnvWheelsAreSearched() throws IOException {
        Path venv = tmp.resolve("home/u/proj/.venv");
        Path f = lib("/home/u/proj/.venv/lib/python3.13/site-packages/nvidia/cu13/lib", "libcudart.so.13");
        assertEquals(f, search(Map.of("VIRTUAL_ENV", venv.toString())).find(Library.CUDART).orElseThrow());
        assertTrue(search(Map.of()).find(Library.CUDART).isEmpty(), "outside the standard places without VIRTUAL_ENV");
    }

    @Test
    void searchOrderOfExistingFolders() throws IOException {
        lib("/usr/lib", "x");
        lib("/usr/local/cuda/lib64", "x");
        lib("/opt/a/.venv/lib/python3.12/site-packages/nvidia/cu13/lib", "x");
        lib("/usr/lib/x86_64-linux-gnu", "x");
        lib("/envhome/lib", "x");
        List<Path> dirs = search(Map.of("KILN_CUDA_HOME", tmp.resolve("envhome").toString())).searchDirs();
        assertEquals(List.of(tmp.resolve("envhome"), tmp.resolve("envhome/lib"), tmp.resolve("usr/local/cuda/lib64"),
                tmp.resolve("usr/lib/x86_64-linux-gnu"), tmp.resolve("usr/lib"),
                tmp.resolve("opt/a/.venv/lib/python3.12/site-packages/nvidia/cu13/lib")), dirs);
    }

    @Test
    void missingLibraryIsOneLineNamingWhatAndWhere() {
        CudaUnavailableException e = assertThrows(CudaUnavailableException.class, () -> search(Map.of()).require(Library.DRIVER));
        String m = e.getMessage();
        assertFalse(m.contains("\n"), m);
        assertTrue(m.startsWith("CUDA is not available: the NVIDIA driver (libcuda.so.1) not found in "), m);
        for (String where : List.of("/usr/local/cuda/targets/x86_64-linux/lib", "/usr/local/cuda-*/lib64", "/usr/lib/x86_64-linux-gnu",
                "/usr/lib,", "/opt/*/.venv/lib/python3*/site-packages/nvidia/*/lib", "KILN_CUDA_HOME, CUDA_HOME, CUDA_PATH unset",
                "--device cpu", "set KILN_CUDA_HOME"))
            assertTrue(m.contains(where), () -> "message lacks '" + where + "': " + m);
        String withEnv = assertThrows(CudaUnavailableException.class,
                () -> search(Map.of("KILN_CUDA_HOME", "/nowhere")).require(Library.CUBLAS)).getMessage();
        assertTrue(withEnv.contains("cuBLAS (libcublas.so.13 or libcublas.so.12) not found in /nowhere, /nowhere/lib64"), withEnv);
        assertTrue(withEnv.contains("(CUDA_HOME, CUDA_PATH unset)"), withEnv);
    }

    @Test
    void openFailsWithTheSameMessagePlusTheDynamicLinker() {
        boolean linkerKnowsDriver;
        try {
            java.lang.foreign.SymbolLookup.libraryLookup("libcuda.so.1", java.lang.foreign.Arena.global());
            linkerKnowsDriver = true;
        } catch (IllegalArgumentException e) {
            linkerKnowsDriver = false;
        }
        assumeFalse(linkerKnowsDriver, "this machine has an NVIDIA driver the dynamic linker finds");
        CudaUnavailableException e = assertThrows(CudaUnavailableException.class, () -> search(Map.of()).open(Library.DRIVER));
        assertTrue(e.getMessage().contains("nor by the dynamic linker"), e.getMessage());
    }

    @Test
    void versionOrderComparesNumbersAsNumbers() {
        assertTrue(CudaLibraries.compareVersions("cuda-12.10", "cuda-12.9") > 0);
        assertTrue(CudaLibraries.compareVersions("cuda-13.0", "cuda-12.9") > 0);
        assertTrue(CudaLibraries.compareVersions("python3.9", "python3.12") < 0);
        assertEquals(0, CudaLibraries.compareVersions("cu13", "cu13"));
    }
}
