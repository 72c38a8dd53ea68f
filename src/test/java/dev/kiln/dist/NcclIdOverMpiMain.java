package dev.kiln.dist;

import java.util.HexFormat;

/**
 * Under mpirun: rank 0's NCCL unique id reaches every rank through {@link NcclProcessGroup#broadcastId} over MPI,
 * byte for byte (the id is random bytes; as floats many are NaNs or denormals, which MPI must copy untouched).
 * Prints "rank R id HEX" on each rank.
 */
public final class NcclIdOverMpiMain {
    public static void main(String[] args) {
        MpiProcessGroup world = MpiProcessGroup.world();
        byte[] id = new byte[Nccl.UNIQUE_ID_BYTES];
        if (world.rank() == 0) {
            new java.util.Random(20261123).nextBytes(id);
            for (int i = 0; i < 16; i++) {   // signalling and quiet NaNs, a denormal, negative zero
                int[] words = {0x7fa00001, 0xffc00002, 0x00000003, 0x80000000};
                int w = words[i % 4];
                for (int b = 0; b < 4; b++) id[4 * i + b] = (byte) (w >>> (8 * b));
            }
        }
        byte[] got = NcclProcessGroup.broadcastId(world, id);
        System.out.println("rank " + world.rank() + " id " + HexFormat.of().formatHex(got));
        System.out.flush();
        world.barrier();
    }
}
