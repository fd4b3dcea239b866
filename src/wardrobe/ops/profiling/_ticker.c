/* The profiler's clock: a real OS thread that never takes the GIL.
 *
 * A Python sampler thread has to win the GIL from the busy main thread on every tick. Under CPU saturation that
 * handoff parks the main thread until the sampler gets a core, and then again until the main thread gets one back:
 * a few ticks' worth of scheduler latency a second, paid by every request. This thread only sleeps and, each
 * period, asks CPython (Py_AddPendingCall, documented as safe without the GIL or a thread state) to run the
 * callback on the main thread at its next bytecode boundary, in whichever greenlet is running then. At most one
 * call is outstanding. When nothing runs bytecode (the GIL stays free: an idle hub, a long C call), or the main
 * thread has not picked a call up for STALL_PERIODS periods, the thread takes the GIL and runs the callback
 * itself, as a Python sampler thread would, so idle time, work in C and other threads are sampled on time.
 * The callback gets one argument: True when it runs on this thread, False on the main one.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030C0000
#define Py_BUILD_CORE
#undef _PyGC_FINALIZED /* cpython/objimpl.h and pycore_gc.h both define it */
#include "internal/pycore_interp.h"
#include "internal/pycore_runtime.h"
#undef Py_BUILD_CORE
#define CPYTHON_311 1
#endif

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <time.h>

static pthread_t ticker_thread;
static int running;               /* guarded by the GIL */
static PyObject *callback;        /* guarded by the GIL */
static long long period_ns;
static atomic_int stop_requested;
static atomic_int outstanding;
static atomic_llong posted, direct, refused;

#define STALL_PERIODS 2
#define IDLE_CHECK_NS 300000 /* 0.3 ms */

static PyInterpreterState *main_interp;

/* Whether no thread holds the GIL right now (an idle hub in epoll, a blocking call, a C loop that let go of it).
 * Then nothing runs bytecode, so a pending call would only run at the next wake-up, always at the same moment of
 * a request's life (its start): sampling from the clock's own thread instead keeps samples even in time, and
 * taking a free GIL costs no handoff. Unknown outside 3.11: always post. */
static int
gil_is_free(void)
{
#ifdef CPYTHON_311
    return !_Py_atomic_load_relaxed(&_PyRuntime.ceval.gil.locked);
#else
    return 0;
#endif
}

/* CPython 3.11's Py_AddPendingCall, called from a thread other than the main one, queues the call but computes
 * the eval breaker from the *calling* thread's point of view, so it stays unset: a main thread busy in pure Python
 * would notice the call only at its next GIL release. So on 3.11 the breaker is set here afterwards, as the
 * interpreter itself does for a GIL drop request; the main thread runs the call and recomputes the breaker. (If
 * it ran the call in between, the breaker stays set until the next call or GIL switch: a few wasted checks.)
 * Elsewhere calls wait for the main thread's next GIL reacquire (microseconds on a server doing I/O), and the
 * stall path covers a main thread that never lets go. */
static void
wake_main(void)
{
#ifdef CPYTHON_311
    _Py_atomic_store_relaxed(&main_interp->ceval.eval_breaker, 1);
#endif
}

/* With the GIL held: call the callback; an exception never escapes (into the interrupted code, or a C thread). */
static void
invoke(PyObject *direct_flag)
{
    PyObject *cb = callback;
    if (cb == NULL) {
        return;
    }
    Py_INCREF(cb);
    PyObject *result = PyObject_CallOneArg(cb, direct_flag);
    if (result == NULL) {
        PyErr_WriteUnraisable(cb);
    }
    else {
        Py_DECREF(result);
    }
    Py_DECREF(cb);
}

static int
run_callback(void *unused)
{
    (void)unused;
    atomic_store(&outstanding, 0);
    invoke(Py_False);
    return 0;
}

static void
add_ns(struct timespec *ts, long long ns)
{
    ns += ts->tv_nsec;
    ts->tv_sec += (time_t)(ns / 1000000000LL);
    ts->tv_nsec = (long)(ns % 1000000000LL);
}

static int
before(const struct timespec *a, const struct timespec *b)
{
    return a->tv_sec < b->tv_sec || (a->tv_sec == b->tv_sec && a->tv_nsec < b->tv_nsec);
}

/* The main thread is stalled outside the eval loop: sample from here, holding the GIL like a Python thread. */
static void
run_direct(void)
{
    if (_Py_IsFinalizing()) {
        return;
    }
    PyGILState_STATE state = PyGILState_Ensure();
    if (!atomic_load(&stop_requested)) {
        invoke(Py_True);
        atomic_fetch_add(&direct, 1);
    }
    PyGILState_Release(state);
}

static void *
tick_loop(void *unused)
{
    (void)unused;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL); /* signals belong to the interpreter's main thread */

    struct timespec next, now;
    int stalled = 0;
    clock_gettime(CLOCK_MONOTONIC, &next);
    while (!atomic_load(&stop_requested)) {
        add_ns(&next, period_ns);
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (before(&next, &now)) {
            next = now; /* fell behind (a stopped process): don't burst */
        }
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL) == EINTR) {
        }
        if (atomic_load(&stop_requested)) {
            break;
        }
        if (gil_is_free()) {
            /* A busy server lets go of the GIL for a few microseconds around every socket call; taking it
             * then would make the main thread wait for the sample on its way back. Only a GIL that stays free
             * (an idle hub, a long C call) is taken; otherwise the tick is posted as usual. */
            struct timespec settle = {0, IDLE_CHECK_NS};
            nanosleep(&settle, NULL);
            if (gil_is_free()) {
                run_direct();
                continue;
            }
        }
        if (atomic_exchange(&outstanding, 1) != 0) {
            if (++stalled >= STALL_PERIODS) {
                run_direct();
            }
            continue;
        }
        stalled = 0;
        if (Py_AddPendingCall(run_callback, NULL) != 0) {
            atomic_store(&outstanding, 0); /* CPython's queue is full: try again next period */
            atomic_fetch_add(&refused, 1);
            continue;
        }
        wake_main();
        atomic_fetch_add(&posted, 1);
    }
    return NULL;
}

static void
after_fork_child(void)
{
    /* The thread did not survive the fork; the callback's reference is simply dropped (leaked). */
    running = 0;
    callback = NULL;
    atomic_store(&outstanding, 0);
    atomic_store(&stop_requested, 0);
}

static PyObject *
ticker_start(PyObject *module, PyObject *args)
{
    PyObject *cb;
    double period;
    if (!PyArg_ParseTuple(args, "Od:start", &cb, &period)) {
        return NULL;
    }
    if (!PyCallable_Check(cb)) {
        PyErr_SetString(PyExc_TypeError, "callback must be callable");
        return NULL;
    }
    if (!(period >= 0.0001 && period <= 60.0)) {
        PyErr_SetString(PyExc_ValueError, "period must be between 0.0001 and 60 seconds");
        return NULL;
    }
    if (running) {
        PyErr_SetString(PyExc_RuntimeError, "the native ticker is already running in this process");
        return NULL;
    }
    Py_INCREF(cb);
    Py_XSETREF(callback, cb);
    period_ns = (long long)(period * 1e9);
    main_interp = PyInterpreterState_Main();
    atomic_store(&stop_requested, 0);
    atomic_store(&outstanding, 0);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 64 * 1024);
    int err = pthread_create(&ticker_thread, &attr, tick_loop, NULL);
    pthread_attr_destroy(&attr);
    if (err != 0) {
        Py_CLEAR(callback);
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    running = 1;
    Py_RETURN_NONE;
}

static PyObject *
ticker_stop(PyObject *module, PyObject *unused)
{
    if (running) {
        atomic_store(&stop_requested, 1);
        Py_BEGIN_ALLOW_THREADS
        pthread_join(ticker_thread, NULL); /* at most one period */
        Py_END_ALLOW_THREADS
        running = 0;
    }
    Py_CLEAR(callback); /* a call still queued finds no callback and returns */
    Py_RETURN_NONE;
}

static PyObject *
ticker_stats(PyObject *module, PyObject *unused)
{
    return Py_BuildValue("{s:O,s:L,s:L,s:L}", "running", running ? Py_True : Py_False, "posted",
                         (long long)atomic_load(&posted), "direct", (long long)atomic_load(&direct),
                         "refused", (long long)atomic_load(&refused));
}

static PyMethodDef ticker_methods[] = {
    {"start", ticker_start, METH_VARARGS,
     "start(callback, period): call `callback(direct)` every `period` seconds, on the main thread when it runs "
     "bytecode (direct=False), else on the clock's own thread (direct=True)."},
    {"stop", ticker_stop, METH_NOARGS, "Stop the ticker thread and drop the callback."},
    {"stats", ticker_stats, METH_NOARGS, "Counters: posted (to the main thread), direct (run on the clock's thread), refused."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef ticker_module = {
    PyModuleDef_HEAD_INIT, "wardrobe.ops.profiling._ticker",
    "A native OS-thread clock that schedules profiler ticks on the main thread.", -1, ticker_methods,
};

PyMODINIT_FUNC
PyInit__ticker(void)
{
    static int atfork_done;
    if (!atfork_done) {
        pthread_atfork(NULL, NULL, after_fork_child);
        atfork_done = 1;
    }
    return PyModule_Create(&ticker_module);
}
