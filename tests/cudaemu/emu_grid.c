/* The emulated device's grid executor: runs a kernel's blocks one after
 * another on the calling host thread, each block's threads as fibers
 * (their own stacks, switched by a few instructions of x86-64 assembly),
 * so that __syncthreads is a real barrier: a thread that reaches it stops
 * until every thread of its block has, and __shared__ storage (static
 * per host thread, emu_kernel.h) is shared by the block exactly while it
 * runs. Threads are resumed in thread-index order, round after round
 * between barriers; a block whose threads do not all reach the same
 * barrier is an error (CUDA: undefined behaviour). A barrier must be
 * reached by all of a block's threads or by none, so when thread 0 ends
 * without reaching one the others run as plain calls on the scheduler's
 * stack (the grid-stride kernels' common case; a barrier reached by one
 * of them then is the same error).
 *
 * Under ThreadSanitizer every fiber is a TSan fiber switched without
 * synchronisation, and the only orderings the executor reports are the
 * ones CUDA guarantees: the launch before every thread, a barrier's
 * arrivals before its departures, every thread of a block before the next
 * block (they share the one shared-memory storage) and the host. A
 * thread that reads another's shared-memory write without a barrier
 * between them is then reported as a data race: the race check of the
 * kernels' block reductions. The executor's own bookkeeping is not
 * instrumented. */
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "emu_device.h"

#if defined(__SANITIZE_THREAD__)
#define EMU_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define EMU_TSAN 1
#endif
#endif
#ifdef EMU_TSAN
#include <sanitizer/tsan_interface.h>
#define NO_TSAN __attribute__((no_sanitize("thread"), noinline))
#else
#define NO_TSAN
#endif

#if !defined(__x86_64__)
#error "the emulated device's fibers are written for x86-64"
#endif

/* emu_fiber_swap(&save, to): saves the callee-saved registers, the
 * x87 control word and MXCSR on the current stack, stores the stack
 * pointer in *save, and resumes the context whose stack pointer is `to`.
 * emu_fiber_start is where a new fiber's first swap returns to: it calls
 * r12(r13) with the stack 16-byte aligned (System V). */
__asm__(".text\n"
        ".globl emu_fiber_swap\n"
        ".type emu_fiber_swap,@function\n"
        "emu_fiber_swap:\n"
        "    pushq %rbp\n"
        "    pushq %rbx\n"
        "    pushq %r12\n"
        "    pushq %r13\n"
        "    pushq %r14\n"
        "    pushq %r15\n"
        "    subq $16, %rsp\n"
        "    stmxcsr 8(%rsp)\n"
        "    fnstcw (%rsp)\n"
        "    movq %rsp, (%rdi)\n"
        "    movq %rsi, %rsp\n"
        "    ldmxcsr 8(%rsp)\n"
        "    fldcw (%rsp)\n"
        "    addq $16, %rsp\n"
        "    popq %r15\n"
        "    popq %r14\n"
        "    popq %r13\n"
        "    popq %r12\n"
        "    popq %rbx\n"
        "    popq %rbp\n"
        "    ret\n"
        ".size emu_fiber_swap,.-emu_fiber_swap\n"
        ".globl emu_fiber_start\n"
        ".type emu_fiber_start,@function\n"
        "emu_fiber_start:\n"
        "    movq %r13, %rdi\n"
        "    callq *%r12\n"
        "    ud2\n"
        ".size emu_fiber_start,.-emu_fiber_start\n");
void emu_fiber_swap(void **save, void *to);
void emu_fiber_start(void);

enum { MAX_THREADS = 1024, STACK_BYTES = 256 << 10 };
enum { READY, AT_BARRIER, DONE };

typedef struct {
    void *sp;        /* saved stack pointer while switched out */
    char *stack;     /* mapping: guard page, then STACK_BYTES */
    int state;       /* READY / AT_BARRIER / DONE */
    uint3 tid;       /* threadIdx */
    unsigned linear; /* thread index in the block */
#ifdef EMU_TSAN
    void *tsan;
    char sync_out;     /* what it did before it switched out, for the scheduler */
    unsigned barriers; /* how many barriers this thread of the block has passed */
#endif
} fiber;

/* One host thread's executor: its fibers and the block now running. */
typedef struct {
    fiber *f[MAX_THREADS];
    int nfibers;
    void *sched_sp;
    fiber *current; /* NULL outside a block */
    fiber direct;   /* the thread running as a plain call (no stack of its own) */
    jmp_buf escape; /* where a barrier in a plain call goes */
    uint3 bid;
    uint3 bdim, gdim;
    void (*thread)(void *);
    void *closure;
#ifdef EMU_TSAN
    void *sched_tsan;
    /* addresses TSan synchronises on; barrier k uses sync_barrier[k & 1], so
     * that a thread leaving barrier k (in round k + 1, after its lower-numbered
     * threads have gone on to barrier k + 1) acquires none of their releases
     * at k + 1 - what they did after barrier k stays unordered with what it
     * does, as on the device */
    char sync_launch, sync_barrier[2];
#endif
} executor;

static _Thread_local executor *ex;

static void fiber_main(void *arg);

/* (Re)initialises f's stack so that the next switch to it starts fiber_main(f). */
NO_TSAN static void fiber_reset(fiber *f)
{
    uintptr_t top = ((uintptr_t)f->stack + (size_t)sysconf(_SC_PAGESIZE) + STACK_BYTES) & ~(uintptr_t)15;
    uint64_t *a = (uint64_t *)(top - 8); /* the return address slot: 8 mod 16 */
    uint32_t mxcsr;
    uint16_t fpcw;
    __asm__ volatile("stmxcsr %0" : "=m"(mxcsr));
    __asm__ volatile("fnstcw %0" : "=m"(fpcw));
    a[0] = (uint64_t)(uintptr_t)emu_fiber_start;
    a[-1] = 0;                              /* rbp */
    a[-2] = 0;                              /* rbx */
    a[-3] = (uint64_t)(uintptr_t)fiber_main; /* r12 */
    a[-4] = (uint64_t)(uintptr_t)f;          /* r13 */
    a[-5] = 0;                              /* r14 */
    a[-6] = 0;                              /* r15 */
    uint32_t *fp = (uint32_t *)(void *)(a - 8);
    fp[0] = fpcw;
    fp[1] = 0;
    fp[2] = mxcsr;
    fp[3] = 0;
    f->sp = a - 8;
    f->state = READY;
}

NO_TSAN static fiber *fiber_new(void)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    fiber *f = calloc(1, sizeof *f);
    if (!f)
        return NULL;
    f->stack = mmap(NULL, page + STACK_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (f->stack == MAP_FAILED) {
        free(f);
        return NULL;
    }
    mprotect(f->stack, page, PROT_NONE); /* a stack overflow faults instead of corrupting memory */
#ifdef EMU_TSAN
    f->tsan = __tsan_create_fiber(0);
#endif
    fiber_reset(f);
    return f;
}

/* From a fiber back to the scheduler. */
NO_TSAN static void to_scheduler(fiber *f)
{
#ifdef EMU_TSAN
    __tsan_release(&f->sync_out);
    __tsan_switch_to_fiber(ex->sched_tsan, __tsan_switch_to_fiber_no_sync);
#endif
    emu_fiber_swap(&f->sp, ex->sched_sp);
}

/* From the scheduler into fiber f (ex->current set). */
NO_TSAN static void to_fiber(fiber *f)
{
    ex->current = f;
#ifdef EMU_TSAN
    __tsan_switch_to_fiber(f->tsan, __tsan_switch_to_fiber_no_sync);
#endif
    emu_fiber_swap(&ex->sched_sp, f->sp);
    ex->current = NULL;
}

NO_TSAN static void thread_begin(void)
{
#ifdef EMU_TSAN
    __tsan_acquire(&ex->sync_launch);
#endif
}

NO_TSAN static void thread_end(fiber *f) { f->state = DONE; }

NO_TSAN static void (*thread_fn(void))(void *) { return ex->thread; }
NO_TSAN static void *thread_closure(void) { return ex->closure; }

/* A fiber runs one thread of a block, returns to the scheduler, and is
 * resumed for a thread of a later block or grid. */
static void fiber_main(void *arg)
{
    fiber *f = arg;
    for (;;) {
        thread_begin();
        thread_fn()(thread_closure());
        thread_end(f);
        to_scheduler(f);
    }
}

NO_TSAN void amdim_emu_syncthreads(void)
{
    fiber *f = ex ? ex->current : NULL;
    if (!f) {
        fprintf(stderr, "emulated device: __syncthreads() outside a kernel\n");
        abort();
    }
    if (f == &ex->direct) /* thread 0 of this block returned without a barrier */
        longjmp(ex->escape, 1);
#ifdef EMU_TSAN
    char *sync = &ex->sync_barrier[f->barriers++ & 1];
    __tsan_release(sync);
#endif
    f->state = AT_BARRIER;
    to_scheduler(f);
#ifdef EMU_TSAN
    __tsan_acquire(sync);
#endif
}

/* AMDIM_SHARED (emu_kernel.h): thread 0 of a block, the first of its
 * threads to run and so the first to reach the declaration, fills the
 * block's shared array with 0xff bytes. Byte by byte through a volatile
 * pointer in uninstrumented code: TSan sees no write (it would race with
 * the other threads' first writes, which no barrier orders after it -
 * none needs to: the block starts with it). */
NO_TSAN void amdim_emu_shared_fresh(void *p, size_t bytes)
{
    fiber *f = ex ? ex->current : NULL;
    if (!f || f->linear != 0)
        return;
    volatile unsigned char *b = p;
    for (size_t i = 0; i < bytes; i++)
        b[i] = 0xff;
}

/* threadIdx, blockIdx, blockDim, gridDim of the running thread. */
NO_TSAN uint3 amdim_emu_thread_idx(void) { return ex->current->tid; }
NO_TSAN uint3 amdim_emu_block_idx(void) { return ex->bid; }
NO_TSAN uint3 amdim_emu_block_dim(void) { return ex->bdim; }
NO_TSAN uint3 amdim_emu_grid_dim(void) { return ex->gdim; }

NO_TSAN static int executor_ready(unsigned threads)
{
    if (!ex) {
        ex = calloc(1, sizeof *ex);
        if (!ex)
            return 0;
#ifdef EMU_TSAN
        ex->sched_tsan = __tsan_get_current_fiber();
#endif
    }
    while (ex->nfibers < (int)threads) {
        fiber *f = fiber_new();
        if (!f)
            return 0;
        ex->f[ex->nfibers++] = f;
    }
    return 1;
}

static void set_tid(fiber *f, unsigned i, uint3 d)
{
    f->linear = i;
    f->tid.x = i % d.x;
    f->tid.y = i / d.x % d.y;
    f->tid.z = i / (d.x * d.y);
}

#ifndef EMU_TSAN
/* Threads first .. threads - 1 as plain calls (thread 0 ended without a
 * barrier). cudaErrorLaunchFailure if one reaches a barrier. */
NO_TSAN static cudaError_t run_direct(const char *name, unsigned first, unsigned threads)
{
    volatile unsigned i = first;
    if (setjmp(ex->escape)) {
        ex->current = NULL;
        fprintf(stderr,
                "emulated device: kernel %s, block (%u, %u, %u): thread %u reached __syncthreads(), thread 0 "
                "returned without one\n",
                name, ex->bid.x, ex->bid.y, ex->bid.z, i);
        return cudaErrorLaunchFailure;
    }
    for (; i < threads; i++) {
        set_tid(&ex->direct, i, ex->bdim);
        ex->current = &ex->direct;
        ex->thread(ex->closure);
    }
    ex->current = NULL;
    return cudaSuccess;
}
#endif

/* One block: rounds of resuming every live thread in index order until
 * all are done; between rounds all must wait at the barrier or all be done. */
NO_TSAN static cudaError_t run_block(const char *name, unsigned threads)
{
    uint3 d = ex->bdim;
#ifdef EMU_TSAN
    __tsan_release(&ex->sync_launch); /* the launch (and the block before) before every thread */
    unsigned first = 0;               /* every thread a fiber: TSan sees each one */
#else
    set_tid(ex->f[0], 0, d);
    ex->f[0]->state = READY;
    to_fiber(ex->f[0]);
    if (ex->f[0]->state == DONE)
        return run_direct(name, 1, threads);
    unsigned first = 1; /* thread 0 waits at the first barrier */
#endif
    for (unsigned i = first; i < threads; i++) {
        set_tid(ex->f[i], i, d);
        ex->f[i]->state = READY;
#ifdef EMU_TSAN
        ex->f[i]->barriers = 0;
#endif
    }
    for (unsigned round = 0;; round++) {
        unsigned waiting = 0, done = 0;
        for (unsigned i = 0; i < threads; i++) {
            fiber *f = ex->f[i];
            if (f->state != DONE && (round > 0 || i >= first))
                to_fiber(f);
            waiting += f->state == AT_BARRIER;
            done += f->state == DONE;
        }
        if (done == threads)
            break;
        if (waiting != threads) {
            fprintf(stderr,
                    "emulated device: kernel %s, block (%u, %u, %u): __syncthreads() number %u reached by %u of %u "
                    "threads (%u had returned)\n",
                    name, ex->bid.x, ex->bid.y, ex->bid.z, round + 1, waiting, threads, done);
            for (unsigned i = 0; i < threads; i++)
                if (ex->f[i]->state != DONE)
                    fiber_reset(ex->f[i]); /* abandon the stopped threads */
            return cudaErrorLaunchFailure;
        }
        for (unsigned i = 0; i < threads; i++)
            ex->f[i]->state = READY;
    }
#ifdef EMU_TSAN
    for (unsigned i = 0; i < threads; i++) /* every thread before what comes next */
        __tsan_acquire(&ex->f[i]->sync_out);
#endif
    return cudaSuccess;
}

NO_TSAN cudaError_t emu_grid_run(const char *name, dim3 grid, dim3 block, void (*thread)(void *), void *closure)
{
    unsigned threads = block.x * block.y * block.z;
    if (!executor_ready(threads)) {
        fprintf(stderr, "emulated device: kernel %s: out of memory for %u fibers\n", name, threads);
        return cudaErrorLaunchOutOfResources;
    }
    if (ex->current) {
        fprintf(stderr, "emulated device: kernel %s launched from inside a kernel\n", name);
        return cudaErrorLaunchFailure;
    }
    uint3 bdim = {block.x, block.y, block.z}, gdim = {grid.x, grid.y, grid.z};
    ex->bdim = bdim;
    ex->gdim = gdim;
    ex->thread = thread;
    ex->closure = closure;
    cudaError_t e = cudaSuccess;
    for (unsigned z = 0; z < grid.z && e == cudaSuccess; z++)
        for (unsigned y = 0; y < grid.y && e == cudaSuccess; y++)
            for (unsigned x = 0; x < grid.x && e == cudaSuccess; x++) {
                uint3 b = {x, y, z};
                ex->bid = b;
                e = run_block(name, threads);
            }
#ifdef EMU_TSAN
    for (unsigned i = 0; e != cudaSuccess && i < threads; i++) /* a failed block's threads, too */
        __tsan_acquire(&ex->f[i]->sync_out);
#endif
    return e;
}
