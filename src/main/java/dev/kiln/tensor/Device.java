package dev.kiln.tensor;

/** Where a tensor's memory lives: the host, or GPU {@code index} (its memory the host cannot read). */
public record Device(Kind kind, int index) {
    public enum Kind { CPU, CUDA }

    public static final Device CPU = new Device(Kind.CPU, 0);

    /** "cpu", "cuda" (= cuda:0) or "cuda:N"; anything else is an IllegalArgumentException saying what is accepted. */
    public static Device parse(String spec) {
        String s = spec == null ? "" : spec.trim().toLowerCase(java.util.Locale.ROOT);
        if (s.equals("cpu")) return CPU;
        if (s.equals("cuda")) return new Device(Kind.CUDA, 0);
        if (s.matches("cuda:\\d{1,2}")) return new Device(Kind.CUDA, Integer.parseInt(s.substring(5)));
        throw new IllegalArgumentException("must be cpu, cuda or cuda:N, got \"" + spec + "\"");
    }

    @Override
    public String toString() {
        return kind == Kind.CPU ? "cpu" : "cuda:" + index;
    }
}
