package dev.kiln.dist;

import dev.kiln.autograd.Tape;
import dev.kiln.nn.Parameter;
import dev.kiln.nn.models.Gpt;
import dev.kiln.optim.PagedMasters;
import dev.kiln.tensor.DType;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;

/**
 * ZeRO-3 / FSDP parameter sharding over a GPT's units (unit −1: embeddings, final norm and tied head; unit i:
 * block i). A rank keeps the memory of the parameters it owns only; a unit's parameters are all-gathered just
 * before the unit runs and evicted right after, in forward and again in backward: on entering block i the forward
 * marks the tape (and on leaving it marks it again), so that backward gathers the block before its nodes run and
 * evicts it after they ran. Unit −1 stays gathered from the start of a training forward to the end of its
 * backward (the tied head is its last user in forward and the embedding its last in backward).
 *
 * <p>Under mixed precision it is the {@link PagedMasters} of the parameters other ranks own: this rank keeps no fp32
 * master of them (their owner does). Between {@link #beginHalfPrecision} and {@link #endHalfPrecision} (forward and
 * backward of a training step, when every owned parameter holds its half-precision working copy) the all-gathers carry
 * fp16/bf16 bits, 2 bytes an element instead of 4, and what arrives is the owner's working copy, exactly; outside
 * (evaluation, checkpoints) they carry the fp32 masters.
 */
final class ParameterSharding implements Gpt.UnitHook, PagedMasters {
    private final ProcessGroup group;
    private final ParameterOwners owners;
    private final int rank, ranks;
    private final List<List<String>> units = new ArrayList<>(); // index u + 1
    private final Map<String, Parameter> params;
    private final boolean[] resident;
    private MemorySegment send, recv;
    private DType wire = DType.F32; // what the all-gathers carry: F32, or F16/BF16 during a mixed-precision step

    ParameterSharding(ProcessGroup group, Gpt model, Map<String, Parameter> params, ParameterOwners owners) {
        this.group = group;
        this.owners = owners;
        this.params = params;
        this.rank = group.rank();
        this.ranks = group.size();
        for (int u = -1; u < model.depth(); u++) units.add(new ArrayList<>());
        for (String name : params.keySet()) units.get(unitOf(name) + 1).add(name);
        resident = new boolean[units.size()];
        java.util.Arrays.fill(resident, true); // every rank starts with the whole model (its init or a checkpoint)
        long largest = 0;
        for (List<String> unit : units) largest = Math.max(largest, unit.stream().mapToLong(n -> params.get(n).numel()).sum());
        // (+ a float per rank: a half-precision gather pads each rank's block to a whole float slot)
        recv = Arena.ofAuto().allocate(Math.max(4, largest * 4 + 4L * ranks), 64);
        send = Arena.ofAuto().allocate(Math.max(4, largest * 4 + 4L * ranks), 64);
    }

    /** transformer.h.&lt;i&gt;.… belongs to block i; everything else to unit −1. */
    static int unitOf(String name) {
        if (!name.startsWith("transformer.h.")) return -1;
        int end = name.indexOf('.', "transformer.h.".length());
        return Integer.parseInt(name.substring("transformer.h.".length(), end));
    }

    @Override
    public void enter(int unit) {
        gather(unit);
        if (unit >= 0 && Tape.isGradEnabled()) Tape.mark(() -> evict(unit)); // backward: after block's nodes ran
    }

    @Override
    public void exit(int unit) {
        if (unit >= 0) {
            if (Tape.isGradEnabled()) Tape.mark(() -> gather(unit)); // backward: before the block's nodes run
            evict(unit);
        } else if (!Tape.isGradEnabled()) {
            evict(unit); // a training forward keeps unit −1 until its backward ends (evictRoot)
        }
    }

    /** Called when backward ended. */
    void evictRoot() {
        evict(-1);
    }

    /** All-gathers unit {@code u} (a collective: every rank calls it at the same point); no-op when it is gathered. */
    void gather(int u) {
        if (resident[u + 1]) return;
        if (wire != DType.F32) {
            gatherHalf(u);
            return;
        }
        List<String> unit = units.get(u + 1);
        int[] counts = new int[ranks];
        long at = 0;
        for (String n : unit) {
            int o = owners.owner(n);
            counts[o] += (int) params.get(n).numel();
            if (o == rank) {
                FlatF32.pack(params.get(n), params.get(n).numel(), send, at, n);
                at += params.get(n).numel();
            }
        }
        group.allGather(send, recv, counts);
        at = 0;
        for (int r = 0; r < ranks; r++)
            for (String n : unit) {
                if (owners.owner(n) != r) continue;
                Parameter p = params.get(n);
                if (r != rank) {
                    p.storage().restore();
                    FlatF32.unpack(recv, at, p, 1f, n);
                }
                at += p.numel();
            }
        resident[u + 1] = true;
    }

    /**
     * {@link #gather} of half-precision working copies: each rank packs its parameters' fp16/bf16 bits two to a float
     * slot of the buffers (the collectives count floats), its block padded to a whole slot.
     */
    private void gatherHalf(int u) {
        List<String> unit = units.get(u + 1);
        long[] halves = new long[ranks];
        for (String n : unit) {
            int o = owners.owner(n);
            if (o == rank) HalfWire.pack(params.get(n), send, halves[rank], wire, n);
            halves[o] += params.get(n).numel();
        }
        int[] counts = new int[ranks];
        for (int r = 0; r < ranks; r++) counts[r] = Math.toIntExact((halves[r] + 1) / 2);
        group.allGather(send, recv, counts);
        long block = 0; // the float slot where rank r's block starts
        for (int r = 0; r < ranks; r++) {
            long at = 0; // halves into that block
            for (String n : unit) {
                if (owners.owner(n) != r) continue;
                Parameter p = params.get(n);
                if (r != rank) {
                    p.storage().restore();
                    HalfWire.unpack(recv, 2 * block + at, p, wire, n);
                }
                at += p.numel();
            }
            block += counts[r];
        }
        resident[u + 1] = true;
    }

    /** Frees the parameters of unit {@code u} this rank does not own. */
    void evict(int u) {
        if (!resident[u + 1]) return;
        for (String n : units.get(u + 1)) if (owners.owner(n) != rank) params.get(n).storage().evict();
        resident[u + 1] = false;
    }

    void gatherAll() {
        for (int u = -1; u < units.size() - 1; u++) gather(u);
    }

    void evictAll() {
        for (int u = -1; u < units.size() - 1; u++) evict(u);
    }

    @Override
    public java.util.Set<Parameter> pagedParameters() {
        java.util.Set<Parameter> out = java.util.Collections.newSetFromMap(new java.util.IdentityHashMap<>());
        params.forEach((n, p) -> {
            if (owners.owner(n) != rank) out.add(p);
        });
        return out;
    }

    /** Drops every gathered copy (an fp32 one, e.g. after a checkpoint was loaded, must not serve as a working copy). */
    @Override
    public void beginHalfPrecision(DType half) {
        if (half != DType.F16 && half != DType.BF16) throw new IllegalArgumentException("half-precision gathers need F16 or BF16, got " + half);
        evictAll();
        wire = half;
    }

    /** Drops the working copies still gathered (unit −1 when backward did not run) and gathers fp32 masters again. */
    @Override
    public void endHalfPrecision() {
        evictAll();
        wire = DType.F32;
    }
}
