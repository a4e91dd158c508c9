/* The benchmark's C host (bench/run.py): a PKCS#11 host that times what the module adds.

   p11bench MODULE sign FLAGS THREADS CALLS WARM KEYTYPE
       C_Initialize(FLAGS: 2 = CKF_OS_LOCKING_OK, 3 = also CKF_LIBRARY_CANT_CREATE_OS_THREADS),
       the first private key of slot 0 whose CKA_KEY_TYPE is KEYTYPE ("ec": CKM_ECDSA over 32
       bytes; "rsa": CKM_RSA_PKCS over a SHA-256 DigestInfo), then THREADS threads with a session
       each make WARM untimed signatures, wait for each other, and make CALLS timed signatures
       each. Prints one line:
         sign ok=N of N elapsed_us=.. cpu_user_us=.. cpu_sys_us=.. median_us=.. p90_us=..
       elapsed and CPU (getrusage(RUSAGE_SELF): every thread of the process, the module's too)
       cover the timed signatures only; median/p90 are of the single calls (C_SignInit + C_Sign).
   p11bench MODULE list
       C_Initialize(CKF_OS_LOCKING_OK), then slot list, and every object of every slot (the first
       calls that read the keys from KMS). Prints:
         list init_us=.. listing_us=.. slots=.. objects=..
   Build: gcc -O1 -o p11bench p11bench.c -ldl -lpthread (bench/common.py builds it). */

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "../cdefs/pkcs11_types.h"

typedef CK_RV (*fn_initialize)(CK_VOID_PTR);
typedef CK_RV (*fn_finalize)(CK_VOID_PTR);
typedef CK_RV (*fn_get_slot_list)(CK_BBOOL, CK_SLOT_ID_PTR, CK_ULONG_PTR);
typedef CK_RV (*fn_open_session)(CK_SLOT_ID, CK_FLAGS, CK_VOID_PTR, CK_NOTIFY, CK_SESSION_HANDLE *);
typedef CK_RV (*fn_close_session)(CK_SESSION_HANDLE);
typedef CK_RV (*fn_find_objects_init)(CK_SESSION_HANDLE, CK_ATTRIBUTE_PTR, CK_ULONG);
typedef CK_RV (*fn_find_objects)(CK_SESSION_HANDLE, CK_OBJECT_HANDLE_PTR, CK_ULONG, CK_ULONG_PTR);
typedef CK_RV (*fn_find_objects_final)(CK_SESSION_HANDLE);
typedef CK_RV (*fn_sign_init)(CK_SESSION_HANDLE, CK_MECHANISM_PTR, CK_OBJECT_HANDLE);
typedef CK_RV (*fn_sign)(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR);

#define MAX_THREADS 256
#define SIG_ROOM 1024

static void *lib;
static fn_sign_init sign_init;
static fn_sign sign;
static CK_OBJECT_HANDLE key;
static CK_MECHANISM mech;
static CK_BYTE data[64];
static CK_ULONG data_len;
static int calls, warm;
static long *lat_us;      /* [thread][call] */
static int *ok_count;     /* [thread] */
static pthread_barrier_t start_line;

static void *sym(const char *name)
{
    void *f = dlsym(lib, name);
    if (f == NULL) {
        printf("missing %s\n", name);
        exit(3);
    }
    return f;
}

static long us_between(const struct timespec *a, const struct timespec *b)
{
    return (b->tv_sec - a->tv_sec) * 1000000L + (b->tv_nsec - a->tv_nsec) / 1000;
}

static long tv_us(const struct timeval *t)
{
    return t->tv_sec * 1000000L + t->tv_usec;
}

static CK_RV initialize(CK_FLAGS flags)
{
    CK_C_INITIALIZE_ARGS args;
    memset(&args, 0, sizeof(args));
    args.flags = flags;
    return ((fn_initialize)sym("C_Initialize"))(&args);
}

static CK_RV find_key(CK_KEY_TYPE type)
{
    CK_SESSION_HANDLE h = 0;
    CK_OBJECT_CLASS cls = 3; /* CKO_PRIVATE_KEY */
    CK_ULONG n = 0;
    CK_ATTRIBUTE t[2] = {{0x0 /* CKA_CLASS */, &cls, sizeof(cls)},
                         {0x100 /* CKA_KEY_TYPE */, &type, sizeof(type)}};
    CK_RV rv = ((fn_open_session)sym("C_OpenSession"))(0, 4 /* SERIAL */, NULL, NULL, &h);
    if (rv == 0)
        rv = ((fn_find_objects_init)sym("C_FindObjectsInit"))(h, t, 2);
    if (rv == 0)
        rv = ((fn_find_objects)sym("C_FindObjects"))(h, &key, 1, &n);
    if (rv == 0)
        rv = ((fn_find_objects_final)sym("C_FindObjectsFinal"))(h);
    if (rv == 0 && n == 0) {
        printf("no private key of type %lu on slot 0\n", type);
        return 0x80000001UL;
    }
    return rv;
}

static void *worker(void *arg)
{
    int t = (int)(long)arg;
    CK_SESSION_HANDLE h = 0;
    CK_BYTE sig[SIG_ROOM];
    CK_ULONG len;
    struct timespec a, b;
    CK_RV rv = ((fn_open_session)sym("C_OpenSession"))(0, 4, NULL, NULL, &h);
    for (int i = 0; rv == 0 && i < warm; i++) {
        len = sizeof(sig);
        if (sign_init(h, &mech, key) == 0)
            sign(h, data, data_len, sig, &len);
    }
    pthread_barrier_wait(&start_line);
    for (int i = 0; i < calls; i++) {
        CK_RV r = rv;
        len = sizeof(sig);
        clock_gettime(CLOCK_MONOTONIC, &a);
        if (r == 0)
            r = sign_init(h, &mech, key);
        if (r == 0)
            r = sign(h, data, data_len, sig, &len);
        clock_gettime(CLOCK_MONOTONIC, &b);
        lat_us[(size_t)t * (size_t)calls + (size_t)i] = us_between(&a, &b);
        if (r == 0)
            ok_count[t]++;
        else if (ok_count[t] == 0 && i == 0)
            printf("thread %d sign rv=0x%lx\n", t, r);
    }
    if (rv == 0)
        ((fn_close_session)sym("C_CloseSession"))(h);
    return NULL;
}

static int cmp_long(const void *a, const void *b)
{
    long x = *(const long *)a, y = *(const long *)b;
    return (x > y) - (x < y);
}

static int bench_sign(int argc, char **argv)
{
    static const CK_BYTE sha256_prefix[19] = {0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48,
                                              0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04,
                                              0x20};
    if (argc < 8) {
        fprintf(stderr, "usage: p11bench MODULE sign FLAGS THREADS CALLS WARM ec|rsa\n");
        return 2;
    }
    CK_FLAGS flags = strtoul(argv[3], NULL, 0);
    int n = atoi(argv[4]);
    calls = atoi(argv[5]);
    warm = atoi(argv[6]);
    int rsa = strcmp(argv[7], "rsa") == 0;
    if (n < 1 || n > MAX_THREADS || calls < 1 || warm < 0) {
        fprintf(stderr, "THREADS must be 1..%d, CALLS at least 1\n", MAX_THREADS);
        return 2;
    }
    for (int j = 0; j < 32; j++)
        data[rsa ? 19 + j : j] = (CK_BYTE)(j * 7 + 1);
    if (rsa)
        memcpy(data, sha256_prefix, sizeof(sha256_prefix));
    data_len = rsa ? 51 : 32;
    mech.mechanism = rsa ? 0x1 /* CKM_RSA_PKCS */ : 0x1041 /* CKM_ECDSA */;
    sign_init = (fn_sign_init)sym("C_SignInit");
    sign = (fn_sign)sym("C_Sign");
    lat_us = calloc((size_t)n * (size_t)calls, sizeof(long));
    ok_count = calloc((size_t)n, sizeof(int));
    if (lat_us == NULL || ok_count == NULL)
        return 3;

    CK_RV rv = initialize(flags);
    if (rv == 0)
        rv = find_key(rsa ? 0 /* CKK_RSA */ : 3 /* CKK_EC */);
    printf("setup rv=0x%lx\n", rv);
    fflush(stdout);
    if (rv != 0)
        return 1;
    pthread_t threads[MAX_THREADS];
    pthread_barrier_init(&start_line, NULL, (unsigned)n + 1);
    for (int t = 0; t < n; t++)
        pthread_create(&threads[t], NULL, worker, (void *)(long)t);
    struct timespec t0, t1;
    struct rusage r0, r1;
    pthread_barrier_wait(&start_line);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    getrusage(RUSAGE_SELF, &r0);
    for (int t = 0; t < n; t++)
        pthread_join(threads[t], NULL);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    getrusage(RUSAGE_SELF, &r1);
    size_t total = (size_t)n * (size_t)calls;
    int ok = 0;
    for (int t = 0; t < n; t++)
        ok += ok_count[t];
    qsort(lat_us, total, sizeof(long), cmp_long);
    printf("sign ok=%d of %zu elapsed_us=%ld cpu_user_us=%ld cpu_sys_us=%ld median_us=%ld "
           "p90_us=%ld\n", ok, total, us_between(&t0, &t1),
           tv_us(&r1.ru_utime) - tv_us(&r0.ru_utime), tv_us(&r1.ru_stime) - tv_us(&r0.ru_stime),
           lat_us[total / 2], lat_us[total * 9 / 10]);
    fflush(stdout);
    rv = ((fn_finalize)sym("C_Finalize"))(NULL);
    printf("C_Finalize rv=0x%lx\n", rv);
    return ok == (int)total ? 0 : 1;
}

static int bench_list(void)
{
    struct timespec t0, t1, t2;
    CK_SLOT_ID slots[64];
    CK_ULONG nslots = 64, objects = 0;
    CK_OBJECT_HANDLE found[256];
    clock_gettime(CLOCK_MONOTONIC, &t0);
    CK_RV rv = initialize(2);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (rv == 0)
        rv = ((fn_get_slot_list)sym("C_GetSlotList"))(1, slots, &nslots);
    for (CK_ULONG s = 0; rv == 0 && s < nslots; s++) {
        CK_SESSION_HANDLE h = 0;
        CK_ULONG n = 0;
        rv = ((fn_open_session)sym("C_OpenSession"))(slots[s], 4, NULL, NULL, &h);
        if (rv == 0)
            rv = ((fn_find_objects_init)sym("C_FindObjectsInit"))(h, NULL, 0);
        do {
            if (rv == 0)
                rv = ((fn_find_objects)sym("C_FindObjects"))(h, found, 256, &n);
            objects += rv == 0 ? n : 0;
        } while (rv == 0 && n > 0);
        if (rv == 0)
            rv = ((fn_find_objects_final)sym("C_FindObjectsFinal"))(h);
    }
    clock_gettime(CLOCK_MONOTONIC, &t2);
    printf("list rv=0x%lx init_us=%ld listing_us=%ld slots=%lu objects=%lu\n", rv,
           us_between(&t0, &t1), us_between(&t1, &t2), nslots, objects);
    fflush(stdout);
    ((fn_finalize)sym("C_Finalize"))(NULL);
    return rv == 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 3) {
        fprintf(stderr, "usage: p11bench MODULE sign|list ...\n");
        return 2;
    }
    lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (lib == NULL) {
        printf("dlopen: %s\n", dlerror());
        return 3;
    }
    if (strcmp(argv[2], "sign") == 0)
        return bench_sign(argc, argv);
    if (strcmp(argv[2], "list") == 0)
        return bench_list();
    fprintf(stderr, "unknown command %s\n", argv[2]);
    return 2;
}
