package dev.kiln.nn;

import dev.kiln.KilnException;
import dev.kiln.tensor.Tensor;

import java.util.ArrayList;
import java.util.IdentityHashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * A building block with named parameters and children, as in PyTorch. Registration is explicit
 * (no reflection); names are dotted paths ("transformer.h.0.attn.c_attn.weight").
 */
public abstract class Module {
    private final LinkedHashMap<String, Parameter> params = new LinkedHashMap<>();
    private final LinkedHashMap<String, Module> children = new LinkedHashMap<>();
    private boolean training = true;

    protected Parameter registerParameter(String name, Parameter p) {
        if (p != null) params.put(name, p);
        return p;
    }

    protected <M extends Module> M registerModule(String name, M m) {
        children.put(name, m);
        return m;
    }

    /** Registers {@code m} as a child of this module (for building name hierarchies from outside). */
    public <M extends Module> M registerModuleIn(String name, M m) {
        return registerModule(name, m);
    }

    /** Removes the child registered as {@code name} (a model whose structure changes in training, e.g. depth). */
    public void removeModuleIn(String name) {
        if (children.remove(name) == null) throw new IllegalArgumentException("no child module " + name);
    }

    /** All parameters with their dotted names, each shared (tied) parameter once under its first name. */
    public LinkedHashMap<String, Parameter> namedParameters() {
        LinkedHashMap<String, Parameter> out = new LinkedHashMap<>();
        collect("", out, new IdentityHashMap<>());
        return out;
    }

    /** The parameters that train (require grad), by name: all of them unless some were frozen (LoRA freezes the base). */
    public LinkedHashMap<String, Parameter> trainableParameters() {
        LinkedHashMap<String, Parameter> out = namedParameters();
        out.values().removeIf(p -> !p.requiresGrad());
        return out;
    }

    private void collect(String prefix, Map<String, Parameter> out, IdentityHashMap<Parameter, Boolean> seen) {
        for (var e : params.entrySet())
            if (seen.put(e.getValue(), Boolean.TRUE) == null) out.put(prefix + e.getKey(), e.getValue());
        for (var e : children.entrySet()) e.getValue().collect(prefix + e.getKey() + ".", out, seen);
    }

    /** This module ("") and every descendant with its dotted path, parents before children (PyTorch's named_modules). */
    public LinkedHashMap<String, Module> namedModules() {
        LinkedHashMap<String, Module> out = new LinkedHashMap<>();
        collectModules("", out);
        return out;
    }

    private void collectModules(String path, Map<String, Module> out) {
        out.put(path, this);
        for (var e : children.entrySet()) e.getValue().collectModules(path.isEmpty() ? e.getKey() : path + "." + e.getKey(), out);
    }

    public List<Parameter> parameters() {
        return new ArrayList<>(namedParameters().values());
    }

    public long parameterCount() {
        long n = 0;
        for (Parameter p : parameters()) n += p.numel();
        return n;
    }

    /** Parameter tensors by name (shared memory, not copies). */
    public Map<String, Tensor> stateDict() {
        return new LinkedHashMap<>(namedParameters());
    }

    /**
     * Copies values into the parameters. Every parameter must be present with its exact shape;
     * a missing, unexpected or mis-shaped tensor is a KilnException naming it.
     */
    public void loadStateDict(Map<String, Tensor> state) {
        Map<String, Parameter> mine = namedParameters();
        for (var e : mine.entrySet()) {
            Tensor t = state.get(e.getKey());
            if (t == null) throw new KilnException("checkpoint is missing tensor " + e.getKey());
            if (!t.sameShape(e.getValue()))
                throw new KilnException("tensor " + e.getKey() + " has shape " + t.shapeString() + " in the checkpoint but " + e.getValue().shapeString() + " in the model");
        }
        for (String k : state.keySet())
            if (!mine.containsKey(k)) throw new KilnException("checkpoint has unexpected tensor " + k);
        for (var e : mine.entrySet()) e.getValue().copyFrom(state.get(e.getKey()));
    }

    /** Moves every parameter to {@code device} in place (see {@link Parameter#moveTo}); returns this module. */
    public Module to(dev.kiln.tensor.Device device) {
        for (Parameter p : parameters()) p.moveTo(device);
        return this;
    }

    public void zeroGrad() {
        for (Parameter p : parameters()) p.zeroGrad();
    }

    public void train(boolean on) {
        training = on;
        for (Module m : children.values()) m.train(on);
    }

    public void eval() {
        train(false);
    }

    public boolean isTraining() {
        return training;
    }
}
