/*
 * aetherium_hpc.monitors._ticker: the monitor's tick in a native thread (Linux).
 *
 * A Python thread that wakes once per tick costs about twice what a native one does on the same
 * reads (the interpreter and the GIL, on caches gone cold since the last tick; see
 * docs/PERFORMANCE.md). The Ticker's thread, which never takes the GIL, does at each tick what the
 * Python collectors' read() does: the bytes of /proc/stat and /proc/meminfo, the walk of the
 * process tree when due, and the bytes of every tree process's /proc/<pid>/stat. It keeps each
 * tick as a record; the monitor's Python thread drains the records once per batch and parses them
 * with the same code as the pure-Python path (host.py).
 *
 * The rules are host.py's ProcessTreeCollector's, kept in step with it:
 *   - the tree is walked through /proc/<pid>/task/<tid>/children, skipping the threads in
 *     `skip` (the process's own helper threads, which start no process);
 *   - a walk is due when the last field of /proc/loadavg (the last pid handed out) moved since
 *     the last walk, or every `walk_every` ticks, or after a process left the tree alive;
 *   - a process whose stat file cannot be read or says Z/X has ended: reported once with no
 *     bytes, then forgotten (and not picked up again while its parent still lists it);
 *   - a process whose parent is not among the processes read at the same tick left the tree
 *     alive: it is dropped with its descendants, unreported, and the next tick walks;
 *   - once the root has ended the tree is no longer walked.
 *
 * Records: a record is one malloc'd block: a header then, for each process, its pid, the
 * length of its bytes (-1: ended) and the bytes. The ring holds at most `capacity` records;
 * beyond that the oldest is dropped (counted in `dropped`), should nothing drain for that long.
 *
 * Threads and fork: one mutex guards everything the tick touches; drain() only swaps the
 * records out under it. The thread blocks every signal. A forked child never touches a Ticker
 * of its parent (no thread runs there and the mutex may be held): its methods raise and its
 * deallocation leaks what it holds.
 */
#define _GNU_SOURCE /* pthread_setname_np */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define STAT_BYTES 512     /* /proc/stat: its first line ("cpu ...") is what host.py parses */
#define MEMINFO_BYTES 256  /* /proc/meminfo: its first three lines */
#define PID_STAT_BYTES 4096
#define LOADAVG_BYTES 128

typedef struct {
    int *v;
    Py_ssize_t n, cap;
} intvec;

/* Room for one more element in the array *v of n elements (capacity *cap, doubled as needed). */
static int room_for_one(void **v, Py_ssize_t n, Py_ssize_t *cap, size_t size) {
    if (n < *cap) return 0;
    Py_ssize_t grown = *cap ? *cap * 2 : 16;
    void *p = realloc(*v, (size_t)grown * size);
    if (p == NULL) return -1;
    *v = p;
    *cap = grown;
    return 0;
}

static int iv_push(intvec *a, int x) {
    if (room_for_one((void **)&a->v, a->n, &a->cap, sizeof(int)) < 0) return -1;
    a->v[a->n++] = x;
    return 0;
}

static int iv_has(const intvec *a, int x) {
    for (Py_ssize_t i = 0; i < a->n; i++)
        if (a->v[i] == x) return 1;
    return 0;
}

typedef struct {
    int pid;
    int fd;  /* /proc/<pid>/stat kept open; -1: opened at each read (beyond max_open) */
} proc_t;

typedef struct {
    double wall, mono;
    int stat_len, meminfo_len;  /* -1: not read */
    int nproc;
    /* then: stat bytes, meminfo bytes, and per process: int pid, int len, bytes */
} rec_t;

typedef struct {
    PyObject_HEAD
    /* set at construction */
    double interval;
    int root_pid;
    int walk_every;
    int max_open;
    Py_ssize_t capacity;
    /* state of the tick (under mu) */
    pthread_mutex_t mu;
    pthread_cond_t cond;
    int stat_fd, meminfo_fd, loadavg_fd;
    proc_t *procs;
    Py_ssize_t nprocs, procs_cap;
    int open_fds;
    intvec ended;
    intvec skip;
    char last_pid[32];
    int unwalked;
    int root_gone;
    char *scratch;
    size_t scratch_cap;
    /* the ring of records (under mu) */
    rec_t **ring;
    Py_ssize_t head, count;
    /* the thread */
    pthread_t thread;
    int started, stopping, joined;
    double first_tick;
    pid_t owner;
    int self_tid;
    /* counters (under mu) */
    unsigned long long ticks, missed, dropped, walks;
    int exited;   /* the thread has left its loop; cpu_s is its CPU time */
    double cpu_s;
} Ticker;

static double mono_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static double wall_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* -- the process tree ---------------------------------------------------------------------- */
static int proc_index(const Ticker *t, int pid) {
    for (Py_ssize_t i = 0; i < t->nprocs; i++)
        if (t->procs[i].pid == pid) return (int)i;
    return -1;
}

static void proc_close(Ticker *t, Py_ssize_t i) {
    if (t->procs[i].fd >= 0) {
        close(t->procs[i].fd);
        t->procs[i].fd = -1;
        t->open_fds--;
    }
}

static void proc_remove(Ticker *t, Py_ssize_t i) {
    proc_close(t, i);
    t->procs[i] = t->procs[--t->nprocs];
}

static int proc_open_stat(int pid) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    return open(path, O_RDONLY | O_CLOEXEC);
}

static int proc_add(Ticker *t, int pid, int open_now) {
    if (room_for_one((void **)&t->procs, t->nprocs, &t->procs_cap, sizeof(proc_t)) < 0) return -1;
    int fd = -1;
    if (open_now && t->open_fds < t->max_open) {
        fd = proc_open_stat(pid);
        if (fd < 0) return 0; /* gone before it could be read: as psutil.Process(pid) failing */
        t->open_fds++;
    }
    t->procs[t->nprocs].pid = pid;
    t->procs[t->nprocs].fd = fd;
    t->nprocs++;
    return 0;
}

/* Whether this tick walks the tree (host.py: ProcessTreeCollector._walk_due). */
static int walk_due(Ticker *t) {
    if (t->loadavg_fd < 0) return 1;
    char buf[LOADAVG_BYTES + 1];
    ssize_t n = pread(t->loadavg_fd, buf, LOADAVG_BYTES, 0);
    if (n <= 0) {
        close(t->loadavg_fd);
        t->loadavg_fd = -1;
        return 1;
    }
    buf[n] = '\0';
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == ' ')) buf[--n] = '\0';
    char *last = strrchr(buf, ' ');
    last = last ? last + 1 : buf;
    if (*last == '\0' || strspn(last, "0123456789") != strlen(last) || strlen(last) >= sizeof t->last_pid) {
        close(t->loadavg_fd);
        t->loadavg_fd = -1;
        return 1;
    }
    if (strcmp(last, t->last_pid) == 0 && t->unwalked < t->walk_every) {
        t->unwalked++;
        return 0;
    }
    strcpy(t->last_pid, last);
    t->unwalked = 0;
    return 1;
}

static int read_all(int fd, char **buf, size_t *cap, size_t *len) {
    *len = 0;
    for (;;) {
        if (*cap - *len < 4096) {
            size_t c = *cap ? *cap * 2 : 8192;
            char *b = realloc(*buf, c);
            if (b == NULL) return -1;
            *buf = b;
            *cap = c;
        }
        ssize_t n = read(fd, *buf + *len, *cap - *len);
        if (n < 0) return -1;
        if (n == 0) return 0;
        *len += (size_t)n;
    }
}

/* Walk the tree from the root; update the set of processes (host.py: _update_tree). */
static void walk(Ticker *t) {
    intvec found = {0};
    char *buf = NULL;
    size_t cap = 0, len = 0;
    char path[96];
    if (iv_push(&found, t->root_pid) < 0) goto out;
    for (Py_ssize_t k = 0; k < found.n; k++) {
        int pid = found.v[k];
        snprintf(path, sizeof path, "/proc/%d/task", pid);
        DIR *dir = opendir(path);
        if (dir == NULL) continue;
        struct dirent *e;
        while ((e = readdir(dir)) != NULL) {
            if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
            int tid = atoi(e->d_name);
            if (iv_has(&t->skip, tid)) continue;
            snprintf(path, sizeof path, "/proc/%d/task/%d/children", pid, tid);
            int fd = open(path, O_RDONLY | O_CLOEXEC);
            if (fd < 0) continue;
            int rc = read_all(fd, &buf, &cap, &len);
            close(fd);
            if (rc < 0) continue;
            size_t i = 0;
            while (i < len) {
                while (i < len && (buf[i] < '0' || buf[i] > '9')) i++;
                if (i >= len) break;
                long child = 0;
                while (i < len && buf[i] >= '0' && buf[i] <= '9') child = child * 10 + (buf[i++] - '0');
                if (!iv_has(&found, (int)child) && iv_push(&found, (int)child) < 0) break;
            }
        }
        closedir(dir);
    }
    /* forget what is gone */
    for (Py_ssize_t i = t->nprocs - 1; i >= 0; i--)
        if (!iv_has(&found, t->procs[i].pid)) proc_remove(t, i);
    /* ended: keep only the zombies still listed */
    Py_ssize_t w = 0;
    for (Py_ssize_t i = 0; i < t->ended.n; i++)
        if (iv_has(&found, t->ended.v[i])) t->ended.v[w++] = t->ended.v[i];
    t->ended.n = w;
    /* add what is new */
    for (Py_ssize_t k = 0; k < found.n; k++) {
        int pid = found.v[k];
        if (proc_index(t, pid) >= 0 || iv_has(&t->ended, pid)) continue;
        proc_add(t, pid, 1);
    }
out:
    free(found.v);
    free(buf);
}

/* "pid (comm) S ppid ...": the state and parent after the last ')'; 0 when ended or unreadable. */
static int parse_alive(const char *data, ssize_t n, int *ppid) {
    const char *end = NULL;
    for (ssize_t i = n - 1; i >= 0; i--)
        if (data[i] == ')') {
            end = data + i;
            break;
        }
    if (end == NULL || end + 4 >= data + n) return 0;
    char state = end[2];
    if (state == 'Z' || state == 'X') return 0;
    const char *p = end + 3;
    while (p < data + n && *p == ' ') p++;
    long v = 0;
    int digits = 0;
    while (p < data + n && *p >= '0' && *p <= '9') {
        v = v * 10 + (*p++ - '0');
        digits++;
    }
    if (!digits) return 0;
    *ppid = (int)v;
    return 1;
}

/* -- one tick -------------------------------------------------------------------------------- */
static int scratch_reserve(Ticker *t, size_t need) {
    if (need <= t->scratch_cap) return 0;
    size_t cap = t->scratch_cap ? t->scratch_cap : 8192;
    while (cap < need) cap *= 2;
    char *s = realloc(t->scratch, cap);
    if (s == NULL) return -1;
    t->scratch = s;
    t->scratch_cap = cap;
    return 0;
}

static void ring_push(Ticker *t, rec_t *r) {
    if (t->count == t->capacity) { /* nothing drained for that long: the oldest goes */
        free(t->ring[t->head]);
        t->head = (t->head + 1) % t->capacity;
        t->count--;
        t->dropped++;
    }
    t->ring[(t->head + t->count) % t->capacity] = r;
    t->count++;
}

typedef struct {
    int pid, ppid, len;
    size_t off;
    int leaves;
} entry_t;

/* One tick, under mu. Returns -1 when out of memory (the tick is lost). */
static int tick_locked(Ticker *t) {
    double wall = wall_now(), mono = mono_now();
    size_t head = sizeof(rec_t);
    if (scratch_reserve(t, head + STAT_BYTES + MEMINFO_BYTES) < 0) return -1;
    size_t off = head;
    ssize_t stat_len = -1, meminfo_len = -1;
    if (t->stat_fd >= 0) {
        stat_len = pread(t->stat_fd, t->scratch + off, STAT_BYTES, 0);
        if (stat_len < 0) stat_len = -1;
        else off += (size_t)stat_len;
    }
    if (t->meminfo_fd >= 0) {
        meminfo_len = pread(t->meminfo_fd, t->scratch + off, MEMINFO_BYTES, 0);
        if (meminfo_len < 0) meminfo_len = -1;
        else off += (size_t)meminfo_len;
    }
    if (!t->root_gone && walk_due(t)) {
        walk(t);
        t->walks++;
    }

    /* read every process; entries point into the scratch */
    entry_t *ent = malloc((size_t)(t->nprocs ? t->nprocs : 1) * sizeof(entry_t));
    if (ent == NULL) return -1;
    Py_ssize_t n = t->nprocs;
    for (Py_ssize_t i = 0; i < n; i++) {
        proc_t *p = &t->procs[i];
        size_t at = off + 2 * sizeof(int);
        if (scratch_reserve(t, at + PID_STAT_BYTES) < 0) {
            free(ent);
            return -1;
        }
        ssize_t got;
        if (p->fd >= 0) {
            got = pread(p->fd, t->scratch + at, PID_STAT_BYTES, 0);
        } else {
            int fd = proc_open_stat(p->pid);
            got = fd < 0 ? -1 : read(fd, t->scratch + at, PID_STAT_BYTES);
            if (fd >= 0) close(fd);
        }
        int ppid = 0;
        int alive = got > 0 && parse_alive(t->scratch + at, got, &ppid);
        ent[i].pid = p->pid;
        ent[i].ppid = ppid;
        ent[i].len = alive ? (int)got : -1;
        ent[i].off = at;
        ent[i].leaves = 0;
        off = at + (alive ? (size_t)got : 0);
    }
    /* a process whose parent was not read at this tick left the tree alive, with its descendants */
    int left = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (ent[i].len < 0 || ent[i].pid == t->root_pid) continue;
        int parent_read = 0;
        for (Py_ssize_t j = 0; j < n; j++)
            if (ent[j].len >= 0 && ent[j].pid == ent[i].ppid) {
                parent_read = 1;
                break;
            }
        if (!parent_read) ent[i].leaves = left = 1;
    }
    if (left) {
        int grew = 1;
        while (grew) {
            grew = 0;
            for (Py_ssize_t i = 0; i < n; i++) {
                if (ent[i].len < 0 || ent[i].leaves) continue;
                for (Py_ssize_t j = 0; j < n; j++)
                    if (ent[j].leaves && ent[j].pid == ent[i].ppid) {
                        ent[i].leaves = grew = 1;
                        break;
                    }
            }
        }
        t->unwalked = t->walk_every; /* the next tick walks */
        t->last_pid[0] = '\0';
    }
    /* the record: header, host bytes, then the processes reported */
    rec_t *r = malloc(off); /* off: an upper bound of what is kept */
    if (r == NULL) {
        free(ent);
        return -1;
    }
    char *w = (char *)r + head;
    if (stat_len > 0) memcpy(w, t->scratch + head, (size_t)stat_len), w += stat_len;
    if (meminfo_len > 0) memcpy(w, t->scratch + head + (stat_len > 0 ? stat_len : 0), (size_t)meminfo_len), w += meminfo_len;
    int nrep = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (ent[i].leaves) continue;
        memcpy(w, &ent[i].pid, sizeof(int));
        memcpy(w + sizeof(int), &ent[i].len, sizeof(int));
        w += 2 * sizeof(int);
        if (ent[i].len > 0) memcpy(w, t->scratch + ent[i].off, (size_t)ent[i].len), w += ent[i].len;
        nrep++;
    }
    r->wall = wall;
    r->mono = mono;
    r->stat_len = (int)stat_len;
    r->meminfo_len = (int)meminfo_len;
    r->nproc = nrep;
    /* forget the processes that ended or left (ended: not picked up again while listed) */
    for (Py_ssize_t i = n - 1; i >= 0; i--) {
        if (ent[i].len >= 0 && !ent[i].leaves) continue;
        if (ent[i].len < 0) {
            iv_push(&t->ended, ent[i].pid);
            if (ent[i].pid == t->root_pid) t->root_gone = 1;
        }
        int k = proc_index(t, ent[i].pid);
        if (k >= 0) proc_remove(t, k);
    }
    free(ent);
    ring_push(t, r);
    t->ticks++;
    return 0;
}

static void *run(void *arg) {
    Ticker *t = (Ticker *)arg;
    pthread_mutex_lock(&t->mu);
    t->self_tid = (int)syscall(SYS_gettid);
    iv_push(&t->skip, t->self_tid);
    double next = t->first_tick;
    while (!t->stopping) {
        double now = mono_now();
        if (now < next) {
            struct timespec until;
            until.tv_sec = (time_t)next;
            until.tv_nsec = (long)((next - (double)until.tv_sec) * 1e9);
            if (until.tv_nsec >= 1000000000L) until.tv_sec++, until.tv_nsec -= 1000000000L;
            pthread_cond_timedwait(&t->cond, &t->mu, &until);
            continue;
        }
        tick_locked(t);
        next += t->interval;
        now = mono_now();
        if (now > next) { /* this tick overran the next one: skip what was missed */
            double missed = ceil((now - next) / t->interval);
            t->missed += (unsigned long long)missed;
            next += missed * t->interval;
        }
    }
    struct timespec c;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c);
    t->cpu_s = (double)c.tv_sec + (double)c.tv_nsec * 1e-9;
    t->exited = 1;
    pthread_mutex_unlock(&t->mu);
    return NULL;
}

/* -- the Python type ------------------------------------------------------------------------ */
static int not_owner(Ticker *t) {
    if (t->owner != 0 && t->owner != getpid()) {
        PyErr_SetString(PyExc_RuntimeError, "a Ticker belongs to the process that started it, not to a forked child");
        return 1;
    }
    return 0;
}

static int ints_into(PyObject *seq, intvec *out, const char *what) {
    PyObject *fast = PySequence_Fast(seq, what);
    if (fast == NULL) return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    out->n = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        long v = PyLong_AsLong(PySequence_Fast_GET_ITEM(fast, i));
        if (v == -1 && PyErr_Occurred()) {
            Py_DECREF(fast);
            return -1;
        }
        if (iv_push(out, (int)v) < 0) {
            Py_DECREF(fast);
            PyErr_NoMemory();
            return -1;
        }
    }
    Py_DECREF(fast);
    return 0;
}

static int Ticker_init(Ticker *t, PyObject *args, PyObject *kwds) {
    static char *kw[] = {"interval", "root_pid", "pids", "ended", "skip", "walk_every", "max_open", "capacity", NULL};
    double interval;
    int root_pid, walk_every, max_open;
    Py_ssize_t capacity;
    PyObject *pids, *ended, *skip;
    if (t->ring != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "a Ticker is initialised once");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "diOOOiin", kw, &interval, &root_pid, &pids, &ended, &skip,
                                     &walk_every, &max_open, &capacity))
        return -1;
    if (!(interval > 0) || capacity < 1 || walk_every < 0 || max_open < 0) {
        PyErr_SetString(PyExc_ValueError, "interval > 0, capacity >= 1, walk_every >= 0 (0: walk at every tick), max_open >= 0");
        return -1;
    }
    t->interval = interval;
    t->root_pid = root_pid;
    t->walk_every = walk_every;
    t->max_open = max_open;
    t->capacity = capacity;
    intvec start = {0};
    if (ints_into(pids, &start, "pids must be a sequence of ints") < 0 ||
        ints_into(ended, &t->ended, "ended must be a sequence of ints") < 0 ||
        ints_into(skip, &t->skip, "skip must be a sequence of ints") < 0) {
        free(start.v);
        return -1;
    }
    for (Py_ssize_t i = 0; i < start.n; i++)
        if (proc_index(t, start.v[i]) < 0 && proc_add(t, start.v[i], 1) < 0) {
            free(start.v);
            PyErr_NoMemory();
            return -1;
        }
    free(start.v);
    t->ring = calloc((size_t)capacity, sizeof(rec_t *));
    if (t->ring == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    t->stat_fd = open("/proc/stat", O_RDONLY | O_CLOEXEC);
    t->meminfo_fd = open("/proc/meminfo", O_RDONLY | O_CLOEXEC);
    t->loadavg_fd = open("/proc/loadavg", O_RDONLY | O_CLOEXEC);
    if (t->stat_fd < 0 || t->meminfo_fd < 0) {
        PyErr_SetFromErrnoWithFilename(PyExc_OSError, t->stat_fd < 0 ? "/proc/stat" : "/proc/meminfo");
        return -1;
    }
    if (t->loadavg_fd >= 0) walk_due(t); /* the pid counter before the first walk */
    return 0;
}

static PyObject *Ticker_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    Ticker *t = (Ticker *)type->tp_alloc(type, 0);
    if (t == NULL) return NULL;
    pthread_mutex_init(&t->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&t->cond, &ca);
    pthread_condattr_destroy(&ca);
    t->stat_fd = t->meminfo_fd = t->loadavg_fd = -1;
    return (PyObject *)t;
}

static PyObject *Ticker_start(Ticker *t, PyObject *arg) {
    double first = PyFloat_AsDouble(arg);
    if (first == -1.0 && PyErr_Occurred()) return NULL;
    if (t->ring == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Ticker not initialised");
        return NULL;
    }
    if (t->started) {
        PyErr_SetString(PyExc_RuntimeError, "a Ticker starts once");
        return NULL;
    }
    t->first_tick = first;
    t->owner = getpid();
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old); /* the thread blocks every signal */
    int rc = pthread_create(&t->thread, NULL, run, t);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        errno = rc;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    pthread_setname_np(t->thread, "aeth-ticker"); /* as top -H and /proc/<pid>/task/<tid>/comm show it */
    t->started = 1;
    Py_RETURN_NONE;
}

static void stop_thread(Ticker *t) {
    if (!t->started || t->joined) return;
    pthread_mutex_lock(&t->mu);
    t->stopping = 1;
    pthread_cond_signal(&t->cond);
    pthread_mutex_unlock(&t->mu);
    pthread_join(t->thread, NULL);
    t->joined = 1;
}

static PyObject *Ticker_stop(Ticker *t, PyObject *Py_UNUSED(ignored)) {
    if (not_owner(t)) return NULL;
    Py_BEGIN_ALLOW_THREADS
    stop_thread(t);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *Ticker_tick_now(Ticker *t, PyObject *Py_UNUSED(ignored)) {
    if (not_owner(t)) return NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&t->mu);
    rc = tick_locked(t);
    pthread_mutex_unlock(&t->mu);
    Py_END_ALLOW_THREADS
    if (rc < 0) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyObject *bytes_or_none(const char *p, int len) {
    if (len < 0) Py_RETURN_NONE;
    return PyBytes_FromStringAndSize(p, len);
}

/* [(wall, mono, stat bytes | None, meminfo bytes | None, ((pid, stat bytes | None), ...)), ...] */
static PyObject *Ticker_drain(Ticker *t, PyObject *Py_UNUSED(ignored)) {
    if (not_owner(t)) return NULL;
    rec_t **recs = NULL;
    Py_ssize_t n;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&t->mu);
    n = t->count;
    if (n) {
        recs = malloc((size_t)n * sizeof(rec_t *));
        if (recs != NULL) {
            for (Py_ssize_t i = 0; i < n; i++) recs[i] = t->ring[(t->head + i) % t->capacity];
            t->head = (t->head + n) % t->capacity;
            t->count = 0;
        }
    }
    pthread_mutex_unlock(&t->mu);
    Py_END_ALLOW_THREADS
    if (n && recs == NULL) return PyErr_NoMemory();
    PyObject *out = PyList_New(n);
    for (Py_ssize_t i = 0; i < n; i++) {
        rec_t *r = recs[i];
        if (out == NULL) {
            free(r);
            continue;
        }
        const char *p = (const char *)r + sizeof(rec_t);
        PyObject *stat = bytes_or_none(p, r->stat_len);
        p += r->stat_len > 0 ? r->stat_len : 0;
        PyObject *meminfo = bytes_or_none(p, r->meminfo_len);
        p += r->meminfo_len > 0 ? r->meminfo_len : 0;
        PyObject *procs = PyTuple_New(r->nproc);
        for (int k = 0; procs != NULL && k < r->nproc; k++) {
            int pid, len;
            memcpy(&pid, p, sizeof(int));
            memcpy(&len, p + sizeof(int), sizeof(int));
            p += 2 * sizeof(int);
            PyObject *item = Py_BuildValue("(iN)", pid, bytes_or_none(p, len));
            p += len > 0 ? len : 0;
            if (item == NULL) {
                Py_CLEAR(procs);
                break;
            }
            PyTuple_SET_ITEM(procs, k, item);
        }
        PyObject *wall = PyFloat_FromDouble(r->wall), *mono = PyFloat_FromDouble(r->mono);
        PyObject *rec = PyTuple_New(5);
        if (rec == NULL || !wall || !mono || !stat || !meminfo || !procs) {
            Py_XDECREF(wall);
            Py_XDECREF(mono);
            Py_XDECREF(stat);
            Py_XDECREF(meminfo);
            Py_XDECREF(procs);
            Py_XDECREF(rec);
            Py_CLEAR(out);
        } else {
            PyTuple_SET_ITEM(rec, 0, wall);
            PyTuple_SET_ITEM(rec, 1, mono);
            PyTuple_SET_ITEM(rec, 2, stat);
            PyTuple_SET_ITEM(rec, 3, meminfo);
            PyTuple_SET_ITEM(rec, 4, procs);
            PyList_SET_ITEM(out, i, rec);
        }
        free(r);
    }
    free(recs);
    return out;
}

static PyObject *Ticker_set_skip(Ticker *t, PyObject *seq) {
    if (not_owner(t)) return NULL;
    intvec skip = {0};
    if (ints_into(seq, &skip, "skip must be a sequence of ints") < 0) {
        free(skip.v);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&t->mu); /* (held for a tick at most) */
    if (t->self_tid) iv_push(&skip, t->self_tid);
    free(t->skip.v);
    t->skip = skip;
    pthread_mutex_unlock(&t->mu);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *Ticker_counters(Ticker *t, PyObject *Py_UNUSED(ignored)) {
    if (not_owner(t)) return NULL;
    unsigned long long ticks, missed, dropped, walks;
    Py_ssize_t pending;
    double cpu_s = 0.0;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&t->mu);
    ticks = t->ticks, missed = t->missed, dropped = t->dropped, walks = t->walks, pending = t->count;
    if (t->exited) {
        cpu_s = t->cpu_s;
    } else if (t->started) { /* the thread waits (or is about to): its clock is valid while mu is held */
        clockid_t clk;
        struct timespec c;
        if (pthread_getcpuclockid(t->thread, &clk) == 0 && clock_gettime(clk, &c) == 0)
            cpu_s = (double)c.tv_sec + (double)c.tv_nsec * 1e-9;
    }
    pthread_mutex_unlock(&t->mu);
    Py_END_ALLOW_THREADS
    return Py_BuildValue("{s:K,s:K,s:K,s:K,s:n,s:d}", "ticks", ticks, "missed", missed, "dropped", dropped, "walks",
                         walks, "pending", pending, "cpu_s", cpu_s);
}

static void Ticker_dealloc(Ticker *t) {
    if (t->owner != 0 && t->owner != getpid()) { /* a forked child's copy: leak, touch nothing */
        Py_TYPE(t)->tp_free((PyObject *)t);
        return;
    }
    Py_BEGIN_ALLOW_THREADS
    stop_thread(t);
    Py_END_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < t->nprocs; i++) proc_close(t, i);
    free(t->procs);
    for (Py_ssize_t i = 0; i < t->count; i++) free(t->ring[(t->head + i) % t->capacity]);
    free(t->ring);
    free(t->ended.v);
    free(t->skip.v);
    free(t->scratch);
    if (t->stat_fd >= 0) close(t->stat_fd);
    if (t->meminfo_fd >= 0) close(t->meminfo_fd);
    if (t->loadavg_fd >= 0) close(t->loadavg_fd);
    pthread_mutex_destroy(&t->mu);
    pthread_cond_destroy(&t->cond);
    Py_TYPE(t)->tp_free((PyObject *)t);
}

static PyMethodDef Ticker_methods[] = {
    {"start", (PyCFunction)Ticker_start, METH_O, "start(first_tick): start the thread; first_tick is a time.monotonic() value"},
    {"stop", (PyCFunction)Ticker_stop, METH_NOARGS, "stop the thread (joins it); the records stay to drain"},
    {"tick_now", (PyCFunction)Ticker_tick_now, METH_NOARGS, "take one tick now, in the calling thread"},
    {"drain", (PyCFunction)Ticker_drain, METH_NOARGS,
     "the ticks read so far, oldest first: [(wall, mono, stat, meminfo, ((pid, stat bytes or None), ...))]"},
    {"set_skip", (PyCFunction)Ticker_set_skip, METH_O, "the thread ids whose children files the walk skips"},
    {"counters", (PyCFunction)Ticker_counters, METH_NOARGS, "{ticks, missed, dropped, walks, pending, cpu_s}: walks of the tree; cpu_s: the thread's CPU time"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject TickerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "aetherium_hpc.monitors._ticker.Ticker",
    .tp_basicsize = sizeof(Ticker),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Ticker(interval, root_pid, pids, ended, skip, walk_every, max_open, capacity): the monitor's tick "
              "(host and process-tree reads) in a native thread",
    .tp_new = Ticker_new,
    .tp_init = (initproc)Ticker_init,
    .tp_dealloc = (destructor)Ticker_dealloc,
    .tp_methods = Ticker_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_ticker", "The monitor's tick in a native thread (see _ticker.c).", -1, NULL,
};

PyMODINIT_FUNC PyInit__ticker(void) {
    if (PyType_Ready(&TickerType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    Py_INCREF(&TickerType);
    if (PyModule_AddObject(m, "Ticker", (PyObject *)&TickerType) < 0) {
        Py_DECREF(&TickerType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
