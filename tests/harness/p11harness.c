/* A small PKCS#11 host for what the stock tools cannot reach: C_Initialize flag combinations,
   the interface list, the failed-start path, fork, C_Finalize after KMS use, the host's locale
   and signals, SIGINT, many threads signing in both threading modes, a hung request, and
   C_Finalize from the host's exit handler. Prints one "name rv=0x..." line per call.
   Build: cc -o p11harness p11harness.c -ldl -lpthread. Usage: p11harness MODULE COMMAND [ARGS]. */

#include <dlfcn.h>
#include <locale.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../../cdefs/pkcs11_types.h"

typedef CK_RV (*fn_initialize)(CK_VOID_PTR);
typedef CK_RV (*fn_finalize)(CK_VOID_PTR);
typedef CK_RV (*fn_get_info)(CK_INFO_PTR);
typedef CK_RV (*fn_get_slot_list)(CK_BBOOL, CK_SLOT_ID_PTR, CK_ULONG_PTR);
typedef CK_RV (*fn_get_interface_list)(CK_INTERFACE_PTR, CK_ULONG_PTR);
typedef CK_RV (*fn_get_interface)(CK_UTF8CHAR_PTR, CK_VERSION_PTR, CK_INTERFACE_PTR_PTR, CK_FLAGS);
typedef CK_RV (*fn_get_function_list)(CK_VOID_PTR_PTR);
typedef CK_RV (*fn_open_session)(CK_SLOT_ID, CK_FLAGS, CK_VOID_PTR, CK_NOTIFY, CK_SESSION_HANDLE *);
typedef CK_RV (*fn_get_session_info)(CK_SESSION_HANDLE, CK_SESSION_INFO_PTR);
typedef CK_RV (*fn_find_objects_init)(CK_SESSION_HANDLE, CK_ATTRIBUTE_PTR, CK_ULONG);
typedef CK_RV (*fn_find_objects)(CK_SESSION_HANDLE, CK_OBJECT_HANDLE_PTR, CK_ULONG, CK_ULONG_PTR);
typedef CK_RV (*fn_find_objects_final)(CK_SESSION_HANDLE);
typedef CK_RV (*fn_get_attribute_value)(CK_SESSION_HANDLE, CK_OBJECT_HANDLE, CK_ATTRIBUTE_PTR,
                                        CK_ULONG);
typedef CK_RV (*fn_generate_random)(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG);

static void *lib;

static void *sym(const char *name)
{
    void *f = dlsym(lib, name);
    if (f == NULL) {
        printf("missing %s\n", name);
        exit(3);
    }
    return f;
}

static CK_RV create_mutex(CK_VOID_PTR_PTR m) { *m = malloc(sizeof(pthread_mutex_t)); pthread_mutex_init(*m, NULL); return 0; }
static CK_RV destroy_mutex(CK_VOID_PTR m) { pthread_mutex_destroy(m); free(m); return 0; }
static CK_RV lock_mutex(CK_VOID_PTR m) { pthread_mutex_lock(m); return 0; }
static CK_RV unlock_mutex(CK_VOID_PTR m) { pthread_mutex_unlock(m); return 0; }

static CK_RV initialize(CK_FLAGS flags, int callbacks, const char *reserved)
{
    CK_C_INITIALIZE_ARGS args;
    memset(&args, 0, sizeof(args));
    args.flags = flags;
    if (callbacks) {
        args.CreateMutex = create_mutex;
        args.DestroyMutex = destroy_mutex;
        args.LockMutex = lock_mutex;
        if (callbacks > 3)
            args.UnlockMutex = unlock_mutex;
    }
    args.pReserved = (CK_VOID_PTR)reserved;
    return ((fn_initialize)sym("C_Initialize"))(&args);
}

static CK_RV slot_count(CK_ULONG *count)
{
    return ((fn_get_slot_list)sym("C_GetSlotList"))(0, NULL, count);
}

/* A number from /proc/self/status ("Threads:", "VmRSS:"), -1 if unknown. */
static long status_field(const char *name)
{
    char line[256];
    long n = -1;
    size_t len = strlen(name);
    FILE *f = fopen("/proc/self/status", "r");
    if (f == NULL)
        return -1;
    while (fgets(line, sizeof(line), f) != NULL)
        if (strncmp(line, name, len) == 0 && sscanf(line + len, " %ld", &n) == 1)
            break;
    fclose(f);
    return n;
}

/* The number of threads of this process, -1 if unknown. */
static int thread_count(void)
{
    return (int)status_field("Threads:");
}

/* Opens a session on slot 0, finds every object and reads each one's CKA_LABEL (which makes the
   module fetch the keys from KMS). Prints one line; returns the number of objects or -1. */
static long list_objects(void)
{
    CK_SESSION_HANDLE h = 0;
    CK_OBJECT_HANDLE objects[64];
    CK_ULONG n = 0, labelled = 0;
    CK_RV rv = ((fn_open_session)sym("C_OpenSession"))(0, 4 /* SERIAL */, NULL, NULL, &h);
    if (rv == 0)
        rv = ((fn_find_objects_init)sym("C_FindObjectsInit"))(h, NULL, 0);
    if (rv == 0)
        rv = ((fn_find_objects)sym("C_FindObjects"))(h, objects, 64, &n);
    if (rv == 0)
        rv = ((fn_find_objects_final)sym("C_FindObjectsFinal"))(h);
    for (CK_ULONG i = 0; rv == 0 && i < n; i++) {
        char label[256];
        CK_ATTRIBUTE attr = {0x3 /* CKA_LABEL */, label, sizeof(label)};
        rv = ((fn_get_attribute_value)sym("C_GetAttributeValue"))(h, objects[i], &attr, 1);
        labelled += rv == 0;
    }
    printf("objects rv=0x%lx count=%lu labelled=%lu\n", rv, n, labelled);
    return rv == 0 ? (long)n : -1;
}

/* C_GenerateRandom on a new session: always a KMS call. */
static void generate_random(void)
{
    CK_SESSION_HANDLE h = 0;
    CK_BYTE buf[16];
    CK_RV rv = ((fn_open_session)sym("C_OpenSession"))(0, 4 /* SERIAL */, NULL, NULL, &h);
    if (rv == 0)
        rv = ((fn_generate_random)sym("C_GenerateRandom"))(h, buf, sizeof(buf));
    printf("C_GenerateRandom rv=0x%lx\n", rv);
}

/* threads N CALLS: N threads, each with its own session, each making CALLS KMS calls
   (C_GenerateRandom) at once. Prints how many calls succeeded and the elapsed wall time. */
static int calls_per_thread;
static int calls_ok;
static pthread_mutex_t calls_lock = PTHREAD_MUTEX_INITIALIZER;

static void *random_worker(void *arg)
{
    CK_SESSION_HANDLE h = 0;
    CK_BYTE buf[32];
    int ok = 0;
    (void)arg;
    if (((fn_open_session)sym("C_OpenSession"))(0, 4 /* SERIAL */, NULL, NULL, &h) == 0)
        for (int i = 0; i < calls_per_thread; i++)
            ok += ((fn_generate_random)sym("C_GenerateRandom"))(h, buf, sizeof(buf)) == 0;
    pthread_mutex_lock(&calls_lock);
    calls_ok += ok;
    pthread_mutex_unlock(&calls_lock);
    return NULL;
}

static void run_threads(int n, int calls)
{
    pthread_t threads[64];
    struct timespec t0, t1;
    calls_per_thread = calls;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < n && i < 64; i++)
        pthread_create(&threads[i], NULL, random_worker, NULL);
    for (int i = 0; i < n && i < 64; i++)
        pthread_join(threads[i], NULL);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("threads calls_ok=%d of %d elapsed_ms=%ld\n", calls_ok, n * calls,
           (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000);
}

/* ---- fork-sign and soak (tests/test_fork.py, bench/soak.py) --------------------------------- */
#include <dirent.h>
#include <errno.h>

typedef CK_RV (*fn_sign_init)(CK_SESSION_HANDLE, CK_MECHANISM_PTR, CK_OBJECT_HANDLE);
typedef CK_RV (*fn_sign)(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR);

#define SOAK_NO_KEY ((CK_RV)0x80000001UL) /* not a CK_RV: the token has no private key */

/* The 32-byte digest signed for number n: byte j is (n * 31 + j) & 0xff (the tests rebuild it). */
static void soak_digest(unsigned n, CK_BYTE out[32])
{
    for (unsigned j = 0; j < 32; j++)
        out[j] = (CK_BYTE)((n * 31 + j) & 0xff);
}

static long soak_ms_since(const struct timespec *t0)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (t.tv_sec - t0->tv_sec) * 1000 + (t.tv_nsec - t0->tv_nsec) / 1000000;
}

/* The first private key on the session's token (the first call loads the keys from KMS). */
static CK_RV soak_find_key(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE *key)
{
    CK_ULONG cls = 3 /* CKO_PRIVATE_KEY */, n = 0;
    CK_ATTRIBUTE t = {0x0 /* CKA_CLASS */, &cls, sizeof(cls)};
    CK_RV rv = ((fn_find_objects_init)sym("C_FindObjectsInit"))(h, &t, 1);
    if (rv != 0)
        return rv;
    rv = ((fn_find_objects)sym("C_FindObjects"))(h, key, 1, &n);
    CK_RV final = ((fn_find_objects_final)sym("C_FindObjectsFinal"))(h);
    if (rv == 0)
        rv = final;
    return rv == 0 && n == 0 ? SOAK_NO_KEY : rv;
}

/* One CKM_ECDSA signature of digest n into sig (*len: its size in, the signature's length out). */
static CK_RV soak_sign(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE key, unsigned n, CK_BYTE *sig,
                       CK_ULONG *len)
{
    CK_MECHANISM m = {0x1041 /* CKM_ECDSA */, NULL, 0};
    CK_BYTE digest[32];
    soak_digest(n, digest);
    CK_RV rv = ((fn_sign_init)sym("C_SignInit"))(h, &m, key);
    if (rv == 0)
        rv = ((fn_sign)sym("C_Sign"))(h, digest, sizeof(digest), sig, len);
    return rv;
}

static int soak_write(const char *dir, const char *name, unsigned n, const CK_BYTE *b, CK_ULONG len)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s-%u.sig", dir, name, n);
    FILE *f = fopen(path, "wb");
    if (f == NULL)
        return -1;
    int ok = fwrite(b, 1, len, f) == len;
    return fclose(f) == 0 && ok ? 0 : -1;
}

static volatile int soak_stop;
static long soak_first_ms = -1; /* when a worker's first signature came back: the load's end */
static int soak_signed, soak_failed, soak_total, soak_every;
static struct timespec soak_t0;
static const char *soak_dir;
static pthread_mutex_t soak_lock = PTHREAD_MUTEX_INITIALIZER;

static void soak_count(CK_RV rv)
{
    pthread_mutex_lock(&soak_lock);
    if (rv == 0 && soak_first_ms < 0)
        soak_first_ms = soak_ms_since(&soak_t0);
    if (rv == 0)
        soak_signed++;
    else
        soak_failed++;
    pthread_mutex_unlock(&soak_lock);
}

/* fork-sign's workers: a session each, signing until told to stop. */
static void *fork_sign_worker(void *arg)
{
    CK_SESSION_HANDLE h = 0;
    CK_OBJECT_HANDLE key = 0;
    CK_BYTE sig[512];
    CK_ULONG len;
    CK_RV rv = ((fn_open_session)sym("C_OpenSession"))(0, 4 /* SERIAL */, NULL, NULL, &h);
    (void)arg;
    if (rv == 0)
        rv = soak_find_key(h, &key);
    if (rv != 0) {
        printf("worker rv=0x%lx\n", rv);
        soak_count(rv);
        return NULL;
    }
    for (unsigned n = 0; !soak_stop; n++) {
        len = sizeof(sig);
        rv = soak_sign(h, key, n, sig, &len);
        soak_count(rv);
        if (rv != 0)
            printf("worker sign rv=0x%lx\n", rv);
    }
    return NULL;
}

/* A forked child: sign digest 1000 + i on the inherited session `h`, or after C_Initialize on a
   new session ("init"); write the signature to DIR/child-I.sig. Exits 0 when all went well. */
static void fork_sign_child(int i, int init, CK_SESSION_HANDLE h)
{
    CK_OBJECT_HANDLE key = 0;
    CK_BYTE sig[512];
    CK_ULONG len = sizeof(sig);
    CK_RV rv = 0;
    alarm(60); /* a hung child dies by SIGALRM: the parent reports it */
    if (init) {
        rv = initialize(2 /* OS_LOCKING_OK */, 0, NULL);
        if (rv == 0)
            rv = ((fn_open_session)sym("C_OpenSession"))(0, 4, NULL, NULL, &h);
    }
    if (rv == 0)
        rv = soak_find_key(h, &key);
    if (rv == 0)
        rv = soak_sign(h, key, 1000 + (unsigned)i, sig, &len);
    if (rv == 0 && soak_write(soak_dir, "child", (unsigned)i, sig, len) != 0)
        rv = SOAK_NO_KEY;
    printf("child %d rv=0x%lx len=%lu\n", i, rv, rv == 0 ? len : 0);
    fflush(stdout);
    _exit(rv == 0 ? 0 : 1);
}

/* fork-sign THREADS CHILDREN STEP_MS inherit|init DIR: THREADS threads sign (CKM_ECDSA) from the
   first token load on; child i is forked STEP_MS * i ms after they start, during that load and
   after it, and signs once (fork_sign_child). Prints a line per child and "children ok=N of M". */
static int fork_sign(int argc, char **argv)
{
    int threads = argc > 3 ? atoi(argv[3]) : 4, children = argc > 4 ? atoi(argv[4]) : 20;
    long step = argc > 5 ? atol(argv[5]) : 50;
    int init = argc > 6 && strcmp(argv[6], "init") == 0, ok = 0;
    pthread_t workers[64];
    pid_t pids[256];
    long forked_ms[256];
    int loaded[256];
    CK_SESSION_HANDLE h = 0;
    soak_dir = argc > 7 ? argv[7] : ".";
    if (threads > 64)
        threads = 64;
    if (children > 256)
        children = 256;
    printf("C_Initialize rv=0x%lx\n", initialize(2 /* OS_LOCKING_OK */, 0, NULL));
    printf("C_OpenSession rv=0x%lx\n",
           ((fn_open_session)sym("C_OpenSession"))(0, 4, NULL, NULL, &h)); /* no KMS call yet */
    fflush(stdout);
    clock_gettime(CLOCK_MONOTONIC, &soak_t0);
    for (int t = 0; t < threads; t++)
        pthread_create(&workers[t], NULL, fork_sign_worker, NULL);
    for (int i = 0; i < children; i++) {
        long wait = step * i - soak_ms_since(&soak_t0);
        if (wait > 0) {
            struct timespec ts = {wait / 1000, (wait % 1000) * 1000000};
            while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
                ;
        }
        pthread_mutex_lock(&soak_lock);
        loaded[i] = soak_first_ms >= 0;
        pthread_mutex_unlock(&soak_lock);
        fflush(stdout);
        forked_ms[i] = soak_ms_since(&soak_t0);
        pids[i] = fork();
        if (pids[i] == 0)
            fork_sign_child(i, init, h);
    }
    for (int i = 0; i < children; i++) {
        int status = 0;
        if (pids[i] < 0 || waitpid(pids[i], &status, 0) != pids[i]) {
            printf("fork %d failed\n", i);
            continue;
        }
        int good = WIFEXITED(status) && WEXITSTATUS(status) == 0;
        ok += good;
        printf("fork %d at_ms=%ld loaded=%d ok=%d %s=%d\n", i, forked_ms[i], loaded[i], good,
               WIFSIGNALED(status) ? "signal" : "exit",
               WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
    }
    soak_stop = 1;
    for (int t = 0; t < threads; t++)
        pthread_join(workers[t], NULL);
    printf("parent signed=%d failed=%d load_ms=%ld\n", soak_signed, soak_failed, soak_first_ms);
    printf("children ok=%d of %d\n", ok, children);
    return 0;
}

/* Open descriptors of this process (without the one listing them), or -1. */
static int soak_fd_count(void)
{
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    int n = 0;
    if (d == NULL)
        return -1;
    while ((e = readdir(d)) != NULL)
        n += e->d_name[0] != '.';
    closedir(d);
    return n - 1;
}

/* soak's workers: claim signature numbers until TOTAL are made; a sample line every EVERY. */
static void *soak_worker(void *arg)
{
    CK_SESSION_HANDLE h = 0;
    CK_OBJECT_HANDLE key = 0;
    CK_BYTE sig[512];
    CK_ULONG len;
    CK_RV rv = ((fn_open_session)sym("C_OpenSession"))(0, 4, NULL, NULL, &h);
    (void)arg;
    if (rv == 0)
        rv = soak_find_key(h, &key);
    if (rv != 0) {
        printf("worker rv=0x%lx\n", rv);
        return NULL;
    }
    for (;;) {
        unsigned n = (unsigned)__atomic_fetch_add(&soak_total, -1, __ATOMIC_RELAXED);
        if ((int)n <= 0)
            return NULL;
        len = sizeof(sig);
        rv = soak_sign(h, key, n, sig, &len);
        if (rv == 0 && n % (unsigned)soak_every == 0 && soak_dir != NULL)
            soak_write(soak_dir, "soak", n, sig, len);
        pthread_mutex_lock(&soak_lock);
        if (rv == 0)
            soak_signed++;
        else if (soak_failed++ < 10)
            printf("sign rv=0x%lx\n", rv);
        int done = soak_signed + soak_failed;
        if (done % soak_every == 0)
            printf("sample done=%d signed=%d rss_kb=%ld fds=%d threads=%d elapsed_ms=%ld\n", done,
                   soak_signed, status_field("VmRSS:"), soak_fd_count(), thread_count(),
                   soak_ms_since(&soak_t0));
        fflush(stdout);
        pthread_mutex_unlock(&soak_lock);
    }
}

/* soak THREADS TOTAL EVERY [DIR]: TOTAL CKM_ECDSA signatures from THREADS threads; a "sample"
   line (RSS, descriptors, threads) every EVERY signatures; signature n is written to DIR when n is
   a multiple of EVERY. */
static int soak(int argc, char **argv)
{
    int threads = argc > 3 ? atoi(argv[3]) : 4;
    pthread_t workers[64];
    soak_total = argc > 4 ? atoi(argv[4]) : 1000;
    soak_every = argc > 5 && atoi(argv[5]) > 0 ? atoi(argv[5]) : 100;
    soak_dir = argc > 6 ? argv[6] : NULL;
    if (threads > 64)
        threads = 64;
    printf("C_Initialize rv=0x%lx\n", initialize(2 /* OS_LOCKING_OK */, 0, NULL));
    printf("sample done=0 signed=0 rss_kb=%ld fds=%d threads=%d elapsed_ms=0\n", status_field("VmRSS:"),
           soak_fd_count(), thread_count());
    fflush(stdout);
    clock_gettime(CLOCK_MONOTONIC, &soak_t0);
    for (int t = 0; t < threads; t++)
        pthread_create(&workers[t], NULL, soak_worker, NULL);
    for (int t = 0; t < threads; t++)
        pthread_join(workers[t], NULL);
    printf("soak signed=%d failed=%d elapsed_ms=%ld\n", soak_signed, soak_failed,
           soak_ms_since(&soak_t0));
    printf("C_Finalize rv=0x%lx\n", ((fn_finalize)sym("C_Finalize"))(NULL));
    return 0;
}
/* ---- end of fork-sign and soak -------------------------------------------------------------- */

/* ---- sign-threads, hang, exit-finalize (tests/test_threads.py, bench/threads.py) ------------- */
#include <dirent.h>
typedef CK_RV (*fn_thr_sign_init)(CK_SESSION_HANDLE, CK_MECHANISM_PTR, CK_OBJECT_HANDLE);
typedef CK_RV (*fn_thr_sign)(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR);

#define THR_DATA 32  /* bytes signed per call (CKM_ECDSA over a SHA-256-sized value) */
#define THR_SIG 132  /* room for any ECDSA signature KMS makes (P-521: 2 x 66) */
#define THR_NO_KEY ((CK_RV)0x80000002UL) /* not a CK_RV: the token has no private key */

static int thr_calls;                     /* signatures per thread */
static int thr_warm;                      /* signatures per thread before the start: not counted */
static CK_OBJECT_HANDLE thr_key;
static CK_BYTE *thr_data, *thr_sigs;      /* [thread][call][THR_DATA or THR_SIG] */
static CK_ULONG *thr_lens;
static CK_RV *thr_rvs;
static int thr_done;                      /* threads that made all their calls */
static pthread_mutex_t thr_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t thr_cond = PTHREAD_COND_INITIALIZER;
static pthread_barrier_t thr_start;

/* What thread t signs in call i: a readable prefix, then bytes that differ per call. */
static void thr_fill(int t, int i, CK_BYTE out[THR_DATA])
{
    memset(out, 0, THR_DATA);
    int n = snprintf((char *)out, THR_DATA, "thread %d call %d ", t, i);
    for (int j = n; j < THR_DATA; j++)
        out[j] = (CK_BYTE)((t * 131 + i * 31 + j * 7) & 0xff);
}

/* The first private key of slot 0's token. */
static CK_RV thr_find_key(CK_OBJECT_HANDLE *key)
{
    CK_SESSION_HANDLE h = 0;
    CK_ULONG cls = 3 /* CKO_PRIVATE_KEY */, n = 0;
    CK_ATTRIBUTE t = {0x0 /* CKA_CLASS */, &cls, sizeof(cls)};
    CK_RV rv = ((fn_open_session)sym("C_OpenSession"))(0, 4 /* SERIAL */, NULL, NULL, &h);
    if (rv == 0)
        rv = ((fn_find_objects_init)sym("C_FindObjectsInit"))(h, &t, 1);
    if (rv == 0)
        rv = ((fn_find_objects)sym("C_FindObjects"))(h, key, 1, &n);
    if (rv == 0)
        rv = ((fn_find_objects_final)sym("C_FindObjectsFinal"))(h);
    return rv == 0 && n == 0 ? THR_NO_KEY : rv;
}

/* One thread: its own session, thr_calls CKM_ECDSA signatures, all starting together. */
static void *thr_worker(void *arg)
{
    int t = (int)(long)arg;
    CK_SESSION_HANDLE h = 0;
    CK_MECHANISM m = {0x1041 /* CKM_ECDSA */, NULL, 0};
    CK_RV session = ((fn_open_session)sym("C_OpenSession"))(0, 4, NULL, NULL, &h);
    for (int i = 0; session == 0 && i < thr_warm; i++) {
        CK_BYTE data[THR_DATA], sig[THR_SIG];
        CK_ULONG len = THR_SIG;
        thr_fill(t, -1 - i, data);
        if (((fn_thr_sign_init)sym("C_SignInit"))(h, &m, thr_key) == 0)
            ((fn_thr_sign)sym("C_Sign"))(h, data, THR_DATA, sig, &len);
    }
    pthread_barrier_wait(&thr_start);
    for (int i = 0; i < thr_calls; i++) {
        size_t k = (size_t)t * (size_t)thr_calls + (size_t)i;
        CK_BYTE *data = thr_data + k * THR_DATA;
        CK_RV rv = session;
        thr_fill(t, i, data);
        thr_lens[k] = THR_SIG;
        if (rv == 0)
            rv = ((fn_thr_sign_init)sym("C_SignInit"))(h, &m, thr_key);
        if (rv == 0)
            rv = ((fn_thr_sign)sym("C_Sign"))(h, data, THR_DATA, thr_sigs + k * THR_SIG,
                                              &thr_lens[k]);
        thr_rvs[k] = rv;
    }
    pthread_mutex_lock(&thr_lock);
    thr_done++;
    pthread_cond_broadcast(&thr_cond);
    pthread_mutex_unlock(&thr_lock);
    return NULL;
}

static void thr_hex(FILE *f, const CK_BYTE *b, CK_ULONG n)
{
    for (CK_ULONG i = 0; i < n; i++)
        fprintf(f, "%02x", b[i]);
}

/* Waits until `done` threads have made all their calls, at most 120 s; returns how many have. */
static int thr_wait_done(int done)
{
    struct timespec deadline;
    int rc = 0, now;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += 120;
    pthread_mutex_lock(&thr_lock);
    while (thr_done < done && rc == 0)
        rc = pthread_cond_timedwait(&thr_cond, &thr_lock, &deadline);
    now = thr_done;
    pthread_mutex_unlock(&thr_lock);
    return now;
}

/* sign-threads FLAGS N M OUT [WARM]  |  hang FLAGS N M OUT: C_Initialize(FLAGS), then N threads
   (each with its own session) make M CKM_ECDSA signatures each, all starting together (after WARM
   signatures each that are neither timed nor written: the threads' clients are made). Each signature
   goes to OUT as "thread call rv data-hex signature-hex". "hang" first prints "others done=D of N"
   once all threads but one have made all their calls (the test holds one request at the KMS
   emulator, and releases it after reading that line). */

/* The buffers of TOTAL signatures (data, signatures, lengths, return values); 0 or -1. */
static int thr_alloc(size_t total)
{
    thr_data = calloc(total, THR_DATA);
    thr_sigs = calloc(total, THR_SIG);
    thr_lens = calloc(total, sizeof(CK_ULONG));
    thr_rvs = calloc(total, sizeof(CK_RV));
    return thr_data && thr_sigs && thr_lens && thr_rvs ? 0 : -1;
}
static int sign_threads(int argc, char **argv, int hang)
{
    CK_FLAGS flags = argc > 3 ? strtoul(argv[3], NULL, 0) : 2;
    int n = argc > 4 ? atoi(argv[4]) : 4, ok = 0, errors = 0;
    CK_RV first = 0;
    const char *out = argc > 6 ? argv[6] : "/dev/null";
    pthread_t threads[64];
    struct timespec t0, t1;
    CK_RV rv;
    thr_calls = argc > 5 ? atoi(argv[5]) : 10;
    thr_warm = argc > 7 ? atoi(argv[7]) : 0;
    if (n < 1 || n > 64 || thr_calls < 1) {
        fprintf(stderr, "N must be 1..64, M at least 1\n");
        return 2;
    }
    size_t total = (size_t)n * (size_t)thr_calls;
    if (thr_alloc(total) != 0)
        return 3;
    rv = initialize(flags, 0, NULL);
    printf("C_Initialize rv=0x%lx\n", rv);
    if (rv == 0)
        rv = thr_find_key(&thr_key); /* loads the token: its KMS calls are done before the start */
    printf("key rv=0x%lx\n", rv);
    fflush(stdout);
    if (rv != 0)
        return 1;
    pthread_barrier_init(&thr_start, NULL, (unsigned)n + 1);
    for (int t = 0; t < n; t++)
        pthread_create(&threads[t], NULL, thr_worker, (void *)(long)t);
    pthread_barrier_wait(&thr_start); /* the warm-up calls are done */
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (hang) {
        printf("others done=%d of %d\n", thr_wait_done(n - 1), n);
        fflush(stdout);
    }
    for (int t = 0; t < n; t++)
        pthread_join(threads[t], NULL);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    FILE *f = fopen(out, "w");
    if (f == NULL) {
        printf("cannot write %s\n", out);
        return 1;
    }
    for (size_t k = 0; k < total; k++) {
        if (thr_rvs[k] == 0)
            ok++;
        else if (errors++ == 0)
            first = thr_rvs[k];
        fprintf(f, "%zu %zu %lx ", k / (size_t)thr_calls, k % (size_t)thr_calls, thr_rvs[k]);
        thr_hex(f, thr_data + k * THR_DATA, THR_DATA);
        fputc(' ', f);
        thr_hex(f, thr_sigs + k * THR_SIG, thr_rvs[k] == 0 ? thr_lens[k] : 0);
        fputc('\n', f);
    }
    if (fclose(f) != 0)
        printf("cannot write %s\n", out);
    printf("sign-threads ok=%d of %zu errors=%d first_rv=0x%lx elapsed_ms=%ld\n", ok, total, errors,
           first, (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000);
    printf("C_Finalize rv=0x%lx\n", ((fn_finalize)sym("C_Finalize"))(NULL));
    return 0;
}

/* The process's open sockets (TCP connections, the event loops' wake-up pairs), or -1. */
static int thr_socket_count(void)
{
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    char path[300], link[64];
    int n = 0;
    if (d == NULL)
        return -1;
    while ((e = readdir(d)) != NULL) {
        ssize_t len;
        snprintf(path, sizeof(path), "/proc/self/fd/%s", e->d_name);
        len = readlink(path, link, sizeof(link) - 1);
        n += len > 7 && strncmp(link, "socket:", 7) == 0;
    }
    closedir(d);
    return n;
}

/* The host's own exit handler, registered before the module's: it runs after the module's
   kms_at_exit (and after OpenSSL's cleanup), as in hosts that finalize their modules at exit. */
static void thr_finalize_at_exit(void)
{
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    CK_RV rv = ((fn_finalize)sym("C_Finalize"))(NULL);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("C_Finalize at exit rv=0x%lx ms=%ld\n", rv,
           (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000);
    printf("sockets after=%d\n", thr_socket_count());
    fflush(stdout);
}

/* exit-finalize FLAGS N: an exit handler that calls C_Finalize, then N threads sign twice each
   (the KMS loops stay open, with their sockets), then the process exits. The open sockets are
   counted before the exit and after that C_Finalize (which must close none). */
static int exit_finalize(int argc, char **argv)
{
    CK_FLAGS flags = argc > 3 ? strtoul(argv[3], NULL, 0) : 2;
    int n = argc > 4 ? atoi(argv[4]) : 4, ok = 0;
    pthread_t threads[64];
    if (n < 1 || n > 64)
        return 2;
    atexit(thr_finalize_at_exit); /* before the module's first call registers its own */
    thr_calls = 2;
    size_t total = (size_t)n * 2;
    if (thr_alloc(total) != 0)
        return 3;
    CK_RV rv = initialize(flags, 0, NULL);
    printf("C_Initialize rv=0x%lx\n", rv);
    if (rv == 0)
        rv = thr_find_key(&thr_key);
    if (rv == 0) {
        pthread_barrier_init(&thr_start, NULL, (unsigned)n);
        for (int t = 0; t < n; t++)
            pthread_create(&threads[t], NULL, thr_worker, (void *)(long)t);
        for (int t = 0; t < n; t++)
            pthread_join(threads[t], NULL);
        for (size_t k = 0; k < total; k++)
            ok += thr_rvs[k] == 0;
    }
    printf("signed ok=%d of %zu\nsockets before=%d\n", ok, total, thr_socket_count());
    fflush(stdout);
    return rv == 0 ? 0 : 1;
}
/* ---- end of sign-threads, hang, exit-finalize ------------------------------------------------ */

int main(int argc, char **argv)
{
    const char *cmd;
    CK_RV rv;
    CK_ULONG count = 0;

    if (argc < 3) {
        fprintf(stderr, "usage: p11harness MODULE COMMAND [ARGS]\n");
        return 2;
    }
    lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (lib == NULL) {
        printf("dlopen failed: %s\n", dlerror());
        return 3;
    }
    cmd = argv[2];
    if (strcmp(cmd, "init") == 0) {
        /* init FLAGS CALLBACKS(0|3|4) [RESERVED]: C_Initialize, a second C_Initialize, slot count */
        CK_FLAGS flags = argc > 3 ? strtoul(argv[3], NULL, 0) : 0;
        int callbacks = argc > 4 ? atoi(argv[4]) : 0;
        const char *reserved = argc > 5 ? argv[5] : NULL;
        rv = initialize(flags, callbacks, reserved);
        printf("C_Initialize rv=0x%lx\n", rv);
        if (rv == 0) {
            printf("C_Initialize again rv=0x%lx\n", initialize(flags, callbacks, reserved));
            rv = slot_count(&count);
            printf("C_GetSlotList rv=0x%lx count=%lu\n", rv, count);
            printf("C_Finalize rv=0x%lx\n", ((fn_finalize)sym("C_Finalize"))(NULL));
            printf("C_Finalize again rv=0x%lx\n", ((fn_finalize)sym("C_Finalize"))(NULL));
        }
    } else if (strcmp(cmd, "null-init") == 0) {
        printf("C_GetSlotList before rv=0x%lx\n", slot_count(&count));
        printf("C_Initialize rv=0x%lx\n", ((fn_initialize)sym("C_Initialize"))(NULL));
        CK_INFO info;
        memset(&info, 0, sizeof(info));
        rv = ((fn_get_info)sym("C_GetInfo"))(&info);
        printf("C_GetInfo rv=0x%lx version=%d.%d manufacturer=[%.32s] description=[%.32s]\n", rv,
               info.cryptokiVersion.major, info.cryptokiVersion.minor, info.manufacturerID,
               info.libraryDescription);
    } else if (strcmp(cmd, "interfaces") == 0) {
        /* Must work without starting Python: no C_Initialize here. */
        CK_INTERFACE list[4];
        CK_INTERFACE_PTR iface = NULL;
        CK_VERSION v30 = {3, 0}, v240 = {2, 40}, v99 = {9, 9};
        CK_VOID_PTR fl = NULL;
        rv = ((fn_get_interface_list)sym("C_GetInterfaceList"))(NULL, &count);
        printf("C_GetInterfaceList count rv=0x%lx count=%lu\n", rv, count);
        count = 1;
        rv = ((fn_get_interface_list)sym("C_GetInterfaceList"))(list, &count);
        printf("C_GetInterfaceList small rv=0x%lx count=%lu\n", rv, count);
        count = 4;
        rv = ((fn_get_interface_list)sym("C_GetInterfaceList"))(list, &count);
        for (CK_ULONG i = 0; rv == 0 && i < count; i++)
            printf("interface %lu name=[%s] version=%d.%d\n", i, (char *)list[i].pInterfaceName,
                   ((CK_VERSION *)list[i].pFunctionList)->major,
                   ((CK_VERSION *)list[i].pFunctionList)->minor);
        rv = ((fn_get_interface)sym("C_GetInterface"))((CK_UTF8CHAR_PTR) "PKCS 11", NULL, &iface, 0);
        printf("C_GetInterface default rv=0x%lx version=%d.%d\n", rv,
               ((CK_VERSION *)iface->pFunctionList)->major, ((CK_VERSION *)iface->pFunctionList)->minor);
        rv = ((fn_get_interface)sym("C_GetInterface"))((CK_UTF8CHAR_PTR) "PKCS 11", &v240, &iface, 0);
        printf("C_GetInterface 2.40 rv=0x%lx version=%d.%d\n", rv,
               ((CK_VERSION *)iface->pFunctionList)->major, ((CK_VERSION *)iface->pFunctionList)->minor);
        rv = ((fn_get_interface)sym("C_GetInterface"))(NULL, &v30, &iface, 0);
        printf("C_GetInterface 3.0 rv=0x%lx\n", rv);
        rv = ((fn_get_interface)sym("C_GetInterface"))(NULL, &v99, &iface, 0);
        printf("C_GetInterface 9.9 rv=0x%lx\n", rv);
        rv = ((fn_get_interface)sym("C_GetInterface"))((CK_UTF8CHAR_PTR) "Vendor", NULL, &iface, 0);
        printf("C_GetInterface vendor rv=0x%lx\n", rv);
        rv = ((fn_get_function_list)sym("C_GetFunctionList"))(&fl);
        printf("C_GetFunctionList rv=0x%lx version=%d.%d\n", rv, ((CK_VERSION *)fl)->major,
               ((CK_VERSION *)fl)->minor);
        printf("C_GetFunctionList null rv=0x%lx\n", ((fn_get_function_list)sym("C_GetFunctionList"))(NULL));
    } else if (strcmp(cmd, "threads") == 0) {
        int n = argc > 3 ? atoi(argv[3]) : 8, calls = argc > 4 ? atoi(argv[4]) : 1;
        printf("C_Initialize rv=0x%lx\n", initialize(2 /* OS_LOCKING_OK */, 0, NULL));
        list_objects(); /* warm up: Python, the KMS client */
        run_threads(n, calls);
    } else if (strcmp(cmd, "fork") == 0) {
        /* fork N [objects]: the parent opens a session, N children each use it (and re-initialise).
           With "objects", the parent calls KMS before forking and each child calls KMS too. */
        int n = argc > 3 ? atoi(argv[3]) : 4, ok = 0;
        int kms = argc > 4 && strcmp(argv[4], "objects") == 0;
        CK_SESSION_HANDLE h = 0;
        CK_SESSION_INFO si;
        printf("C_Initialize rv=0x%lx\n", initialize(2, 0, NULL));
        rv = ((fn_open_session)sym("C_OpenSession"))(0, 4 /* CKF_SERIAL_SESSION */, NULL, NULL, &h);
        printf("C_OpenSession rv=0x%lx\n", rv);
        if (kms)
            list_objects();
        fflush(stdout);
        for (int i = 0; i < n; i++) {
            pid_t pid = fork();
            if (pid == 0) {
                CK_RV r1 = ((fn_get_session_info)sym("C_GetSessionInfo"))(h, &si);
                CK_RV r2 = initialize(2, 0, NULL);
                CK_RV r3 = slot_count(&count);
                long objects = kms ? list_objects() : 1;
                fflush(stdout);
                _exit(r1 == 0 && r2 == 0 && r3 == 0 && count > 0 && objects > 0 ? 0 : 1);
            }
            int status = 0;
            waitpid(pid, &status, 0);
            ok += WIFEXITED(status) && WEXITSTATUS(status) == 0;
        }
        printf("children ok=%d of %d\n", ok, n);
        printf("C_GetSessionInfo parent rv=0x%lx\n", ((fn_get_session_info)sym("C_GetSessionInfo"))(h, &si));
    } else if (strcmp(cmd, "fork-jail") == 0) {
        /* fork-jail JAIL [FLAGS]: (C_Initialize's flags, 2 by default) the parent finds the first private key (from the key cache when it is
           warm: no KMS call), then forks; the child chroot()s into JAIL, an empty directory where
           it can read no file (as nginx's workers may not read the Python the module runs on),
           and signs digest 7 (soak_digest) on the parent's session. Prints the child's rv and
           the signature in hex (docs/design.md, "Key cache"). */
        CK_SESSION_HANDLE h = 0;
        CK_OBJECT_HANDLE key = 0;
        int status = 0;
        CK_FLAGS flags = argc > 4 ? strtoul(argv[4], NULL, 0) : 2 /* OS_LOCKING_OK */;
        printf("C_Initialize rv=0x%lx\n", initialize(flags, 0, NULL));
        rv = ((fn_open_session)sym("C_OpenSession"))(0, 4 /* SERIAL */, NULL, NULL, &h);
        if (rv == 0)
            rv = soak_find_key(h, &key);
        printf("find rv=0x%lx\n", rv);
        fflush(stdout);
        pid_t pid = fork();
        if (pid == 0) {
            CK_BYTE sig[512];
            CK_ULONG len = sizeof(sig);
            alarm(60); /* a hung child dies by SIGALRM: the parent reports it */
            CK_RV r = SOAK_NO_KEY;
            if (chroot(argv[3]) == 0 && chdir("/") == 0)
                r = soak_sign(h, key, 7, sig, &len);
            printf("child rv=0x%lx sig=", r);
            for (CK_ULONG i = 0; r == 0 && i < len; i++)
                printf("%02x", sig[i]);
            printf("\n");
            fflush(stdout);
            _exit(0);
        }
        waitpid(pid, &status, 0);
        printf("child exited=%d\n", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    } else if (strcmp(cmd, "objects") == 0) {
        /* objects FLAGS [ROUNDS]: C_Initialize, list the objects, C_GenerateRandom (KMS calls),
           print the thread count, C_Finalize; ROUNDS times (a new KMS loop after each). */
        CK_FLAGS flags = argc > 3 ? strtoul(argv[3], NULL, 0) : 0;
        int rounds = argc > 4 ? atoi(argv[4]) : 1;
        for (int i = 0; i < rounds; i++) {
            printf("C_Initialize rv=0x%lx\n", initialize(flags, 0, NULL));
            list_objects();
            generate_random();
            printf("threads=%d\n", thread_count());
            printf("C_Finalize rv=0x%lx\n", ((fn_finalize)sym("C_Finalize"))(NULL));
        }
    } else if (strcmp(cmd, "host-state") == 0) {
        /* host-state FLAGS [LOCALE]: the module must leave the host's locale (set to LOCALE first
           when given) and signal dispositions alone, also after KMS calls (docs/design.md,
           "Signals"). */
        CK_FLAGS flags = argc > 3 ? strtoul(argv[3], NULL, 0) : 0;
        if (argc > 4 && setlocale(LC_ALL, argv[4]) == NULL)
            printf("setlocale %s failed\n", argv[4]);
        struct sigaction before[32], after;
        char locale_before[256];
        int changed = 0;
        snprintf(locale_before, sizeof(locale_before), "%s", setlocale(LC_ALL, NULL));
        for (int s = 1; s < 32; s++)
            sigaction(s, NULL, &before[s]);
        printf("C_Initialize rv=0x%lx\n", initialize(flags, 0, NULL));
        list_objects();
        generate_random();
        printf("locale before=%s after=%s\n", locale_before, setlocale(LC_ALL, NULL));
        for (int s = 1; s < 32; s++) {
            sigaction(s, NULL, &after);
            /* glibc adds SA_RESTORER to any disposition that was set (even back to SIG_DFL). */
            if (after.sa_handler != before[s].sa_handler ||
                (after.sa_flags & ~0x04000000) != (before[s].sa_flags & ~0x04000000)) {
                printf("signal %d changed: handler %p -> %p, flags 0x%x -> 0x%x\n", s,
                       (void *)before[s].sa_handler, (void *)after.sa_handler,
                       (unsigned)before[s].sa_flags, (unsigned)after.sa_flags);
                changed++;
            }
        }
        printf("signals changed=%d\n", changed);
        printf("C_Finalize rv=0x%lx\n", ((fn_finalize)sym("C_Finalize"))(NULL));
    } else if (strcmp(cmd, "sigint") == 0) {
        /* sigint FLAGS [objects]: start the module (and optionally call KMS), then raise SIGINT.
           A host with the default disposition must die of it (docs/design.md, "Signals"). */
        CK_FLAGS flags = argc > 3 ? strtoul(argv[3], NULL, 0) : 0;
        struct sigaction sa;
        printf("C_Initialize rv=0x%lx\n", initialize(flags, 0, NULL));
        rv = slot_count(&count);
        printf("C_GetSlotList rv=0x%lx count=%lu\n", rv, count);
        if (argc > 4 && strcmp(argv[4], "objects") == 0)
            list_objects();
        sigaction(SIGINT, NULL, &sa);
        printf("SIGINT handler default=%d\n", sa.sa_handler == SIG_DFL);
        fflush(stdout);
        raise(SIGINT);
        sleep(5);
        printf("survived SIGINT\n");
    } else if (strcmp(cmd, "sign-threads") == 0 || strcmp(cmd, "hang") == 0) {
        return sign_threads(argc, argv, strcmp(cmd, "hang") == 0);
    } else if (strcmp(cmd, "exit-finalize") == 0) {
        return exit_finalize(argc, argv);
    } else if (strcmp(cmd, "fork-sign") == 0 || strcmp(cmd, "soak") == 0) {
        return strcmp(cmd, "soak") == 0 ? soak(argc, argv) : fork_sign(argc, argv);
    } else {
        fprintf(stderr, "unknown command %s\n", cmd);
        return 2;
    }
    return 0;
}
