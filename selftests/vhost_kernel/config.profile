# Profiling fragment, merged after ./config by scripts/build-kernel.sh
# --profile (scripts/vmtest picks it for `bench --profile`). The test kernel
# itself stays without it: these options cost a little on every tick and
# every wake-up.
# /proc/profile: the tick samples the interrupted kernel address on each
# CPU (booted with profile=2: one counter per 4 bytes of kernel text).
# Cheap enough under TCG, unlike the function tracer, which would put a
# call into every kernel function it measures.
CONFIG_PROFILING=y
# /proc/schedstat: per-CPU wake-up counts (ttwu_count) and run delay;
# the harness turns them on with kernel.sched_schedstats while it profiles.
CONFIG_SCHEDSTATS=y
