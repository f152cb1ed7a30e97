/*
 * memtrace's BPF program for the bcc backend: the fixed part.
 *
 * bcc_backend.py compiles this file with -D definitions and appends one small entry and
 * one return function per planned probe, which fill a struct mt_entry and call
 * mt_enter()/mt_leave() below. Macros set by bcc_backend.py:
 *   MT_NPROBES      number of planned probes (probe ids are 0..MT_NPROBES-1)
 *   MT_MAX_FETCH    values fetched per probe, the most any planned spec needs (>= 1)
 *   MT_NCPUS        size of the per-CPU cycle counter array
 *   MT_EVENT_PAGES  pages of the event buffer (ring buffer, or perf buffer per CPU)
 *   MT_SIGSTOP      the SIGSTOP number
 *   MT_TRACER_PID   the tracing process, never stopped
 *   MT_RINGBUF      defined: BPF ring buffers; undefined: perf buffers
 *   MT_AGGREGATE    defined: some probes keep in-kernel latency histograms instead of
 *                   sending per-call records (the generated functions say which)
 */
#include <uapi/linux/ptrace.h>

/* TASK_COMM_LEN; linux/sched.h, a large header, is not included for this alone. */
#define MT_COMM_LEN 16

#define MT_MODNAME_LEN 56          /* MODULE_NAME_LEN on 64-bit */
/* Stack ids are hash buckets: without BPF_F_REUSE_STACKID a second stack hashing to a taken
 * bucket gets -EEXIST and is lost (counted, MT_C_NO_STACK). 1024 buckets lost one of ~30
 * stacks in a lab trace; 16384 is bcc's own default (profile, offcputime), about 16 MB. */
#define MT_STACKS 16384

/* Counters, summed over CPUs by userspace (the order is CounterIndex in bcc_backend.py). */
#define MT_C_LOST 0        /* a record the buffer could not take */
#define MT_C_MISSED 1      /* an entry overwritten before its return was seen */
#define MT_C_NESTED 2      /* a recursive call, folded into the outer one */
#define MT_C_NO_STACK 3    /* bpf_get_stackid failed (stack map full or collision) */
#define MT_C_SIGNAL 4      /* bpf_send_signal(SIGSTOP) failed on a module load */
#define MT_NCOUNTERS 5

/* mt_record.flags */
#define MT_F_RET 1         /* ret holds the return value */
#define MT_F_GRANTED 2     /* granted was read through the saved pointer */
#define MT_F_PMU 4         /* cycles is a PMU delta measured on one CPU */

struct mt_key {
    u32 tid;
    u32 probe;
};

struct mt_entry {
    u64 ts;
    u64 sp;                 /* stack pointer at entry: tells recursion from a lost return */
    u64 ret_addr;           /* the return address found at sp */
    u64 pmu;
    u64 granted_ptr;
    u64 values[MT_MAX_FETCH];
    u32 valid;              /* bit i: values[i] was read */
    s32 stack_id;
    u32 cpu;
    u32 depth;              /* recursive calls still open inside this one */
};

struct mt_record {
    u64 ts;
    u64 duration;
    u64 cycles;
    s64 ret;
    u64 caller;
    u64 values[MT_MAX_FETCH];
    u32 probe;
    u32 flags;
    u32 valid;
    u32 granted;
    u32 pid;
    u32 tid;
    s32 stack_id;
    u32 cpu;
    char comm[MT_COMM_LEN];
};

struct mt_modname {
    char name[MT_MODNAME_LEN];
};

struct mt_held {
    u32 pid;
    s32 signal_ret;
    char name[MT_MODNAME_LEN];
};

BPF_HASH(mt_entries, struct mt_key, struct mt_entry, 10240);
BPF_PERCPU_ARRAY(mt_counters, u64, MT_NCOUNTERS);
BPF_PERF_ARRAY(mt_cycles, MT_NCPUS);
BPF_STACK_TRACE(mt_stacks, MT_STACKS);
/* Modules with probes waiting for them, and the tasks stopped while loading one (by tid). */
BPF_HASH(mt_waiting, struct mt_modname, u32, 64);
BPF_HASH(mt_held_tasks, u32, struct mt_held, 64);

#ifdef MT_AGGREGATE
struct mt_hist_key {
    u32 probe;
    u32 slot;
};
struct mt_sum {
    u64 count;
    u64 total_ns;
    u64 min_ns;
    u64 max_ns;
};
BPF_HISTOGRAM(mt_hist, struct mt_hist_key, MT_NPROBES * 64);
BPF_PERCPU_ARRAY(mt_sums, struct mt_sum, MT_NPROBES);
#endif

#ifdef MT_RINGBUF
BPF_RINGBUF_OUTPUT(mt_events, MT_EVENT_PAGES);
BPF_RINGBUF_OUTPUT(mt_modloads, 1);
#else
BPF_PERF_OUTPUT(mt_events);
BPF_PERF_OUTPUT(mt_modloads);
#endif

static __always_inline void mt_count(u32 index)
{
    u64 *value = mt_counters.lookup(&index);
    if (value)
        (*value)++;
}

/* Read `size` (1, 2, 4 or 8) bytes at `addr` into *dst (zeroed first); 0 on success. */
static __always_inline int mt_read(u64 *dst, u32 size, u64 addr)
{
    *dst = 0;
    if (!addr)
        return -1;
    return bpf_probe_read_kernel(dst, size, (void *)addr);
}

/* bpf_perf_event_read returns -errno in the value when the counter is not open. */
static __always_inline int mt_pmu_ok(u64 value)
{
    return value < (u64)-4095;
}

static __always_inline int mt_enter(struct pt_regs *ctx, u32 probe, struct mt_entry *e,
                                    int want_stack)
{
    struct mt_key key = {};
    key.tid = (u32)bpf_get_current_pid_tgid();
    key.probe = probe;
    e->sp = PT_REGS_SP(ctx);
    mt_read(&e->ret_addr, sizeof(e->ret_addr), e->sp);

    struct mt_entry *old = mt_entries.lookup(&key);
    if (old) {
        u64 old_ret = 0;
        mt_read(&old_ret, sizeof(old_ret), old->sp);
        /* Still running below us: its return address is intact deeper in the stack. */
        if (e->sp < old->sp && old_ret == old->ret_addr) {
            old->depth++;
            mt_count(MT_C_NESTED);
            return 0;
        }
        mt_count(MT_C_MISSED);
    }
    e->stack_id = -1;
    if (want_stack) {
        e->stack_id = mt_stacks.get_stackid(ctx, 0);
        if (e->stack_id < 0)
            mt_count(MT_C_NO_STACK);
    }
    e->cpu = bpf_get_smp_processor_id();
    e->pmu = mt_cycles.perf_read(CUR_CPU_IDENTIFIER);
    e->ts = bpf_ktime_get_ns();
    mt_entries.update(&key, e);
    return 0;
}

static __always_inline int mt_leave(struct pt_regs *ctx, u32 probe, int has_ret, s64 ret,
                                    int read_granted, int aggregate)
{
    u64 now = bpf_ktime_get_ns();
    u64 pmu_now = mt_cycles.perf_read(CUR_CPU_IDENTIFIER);
    u32 cpu = bpf_get_smp_processor_id();
    u64 id = bpf_get_current_pid_tgid();
    struct mt_key key = {};
    key.tid = (u32)id;
    key.probe = probe;

    struct mt_entry *e = mt_entries.lookup(&key);
    if (!e)
        return 0;    /* entered before the probes were attached */
    if (e->depth) {
        e->depth--;
        return 0;
    }
#ifdef MT_AGGREGATE
    if (aggregate) {
        u64 duration = now - e->ts;
        mt_entries.delete(&key);
        struct mt_hist_key hkey = {};
        hkey.probe = probe;
        hkey.slot = bpf_log2l(duration);
        mt_hist.increment(hkey);
        struct mt_sum *sum = mt_sums.lookup(&probe);
        if (sum) {
            if (sum->count == 0 || duration < sum->min_ns)
                sum->min_ns = duration;
            if (duration > sum->max_ns)
                sum->max_ns = duration;
            sum->count++;
            sum->total_ns += duration;
        }
        return 0;
    }
#endif
    struct mt_record rec = {};
    rec.ts = e->ts;
    rec.duration = now - e->ts;
    rec.caller = e->ret_addr;
    rec.valid = e->valid;
    rec.stack_id = e->stack_id;
    rec.cpu = e->cpu;
    __builtin_memcpy(rec.values, e->values, sizeof(rec.values));
    if (e->cpu == cpu && mt_pmu_ok(e->pmu) && mt_pmu_ok(pmu_now)) {
        rec.cycles = pmu_now - e->pmu;
        rec.flags |= MT_F_PMU;
    }
    u64 granted_ptr = e->granted_ptr;
    mt_entries.delete(&key);

    rec.probe = probe;
    rec.pid = id >> 32;
    rec.tid = (u32)id;
    if (has_ret) {
        rec.ret = ret;
        rec.flags |= MT_F_RET;
    }
    if (read_granted && granted_ptr &&
        bpf_probe_read_kernel(&rec.granted, sizeof(rec.granted), (void *)granted_ptr) == 0)
        rec.flags |= MT_F_GRANTED;
    bpf_get_current_comm(&rec.comm, sizeof(rec.comm));
#ifdef MT_RINGBUF
    if (mt_events.ringbuf_output(&rec, sizeof(rec), 0) != 0)
        mt_count(MT_C_LOST);
#else
    if (mt_events.perf_submit(ctx, &rec, sizeof(rec)) != 0)
        mt_count(MT_C_LOST);
#endif
    return 0;
}

/*
 * A module some probe waits for is being loaded: its symbols exist, its init has not run.
 * Stop the loading task (SIGSTOP takes effect when finit_module returns to user space,
 * before the task can load the next module) so userspace can attach that module's probes
 * first; userspace sends SIGCONT. The held-task map is the source of truth (a lost
 * notification cannot leave a task stopped); the record only wakes userspace up.
 */
int mt_module_load(struct tracepoint__module__module_load *args)
{
    struct mt_modname key = {};
    TP_DATA_LOC_READ_STR(key.name, name, sizeof(key.name));
    if (!mt_waiting.lookup(&key))
        return 0;

    u64 id = bpf_get_current_pid_tgid();
    u32 tid = (u32)id;
    struct mt_held held = {};
    held.pid = id >> 32;
    if (held.pid == MT_TRACER_PID)
        return 0;    /* stopping the tracer would wait for itself forever */
    __builtin_memcpy(held.name, key.name, sizeof(held.name));
    /* Record the task before stopping it, so a stopped task is always known. */
    if (mt_held_tasks.update(&tid, &held) != 0)
        return 0;
    held.signal_ret = bpf_send_signal(MT_SIGSTOP);
    if (held.signal_ret != 0)
        mt_count(MT_C_SIGNAL);
    mt_held_tasks.update(&tid, &held);
#ifdef MT_RINGBUF
    mt_modloads.ringbuf_output(&held, sizeof(held), 0);
#else
    mt_modloads.perf_submit(args, &held, sizeof(held));
#endif
    return 0;
}
