/* A small PKCS#11 host for what the stock tools cannot reach: C_Initialize flag combinations,
   the interface list, the failed-start path, fork, C_Finalize after KMS use, the host's locale
   and signals, and SIGINT. Prints one "name rv=0x..." line per call.
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

/* The number of threads of this process (from /proc/self/status), -1 if unknown. */
static int thread_count(void)
{
    char line[256];
    int n = -1;
    FILE *f = fopen("/proc/self/status", "r");
    if (f == NULL)
        return -1;
    while (fgets(line, sizeof(line), f) != NULL)
        if (sscanf(line, "Threads: %d", &n) == 1)
            break;
    fclose(f);
    return n;
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
           when given) and signal dispositions alone (DESIGN 2.4, 2.5), also after KMS calls. */
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
           A host with the default disposition must die by the signal (DESIGN 2.5). */
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
    } else {
        fprintf(stderr, "unknown command %s\n", cmd);
        return 2;
    }
    return 0;
}
