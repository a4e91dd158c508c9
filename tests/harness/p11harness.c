/* A small PKCS#11 host for what the stock tools cannot reach: C_Initialize flag combinations,
   the interface list, the failed-start path and fork. Prints one "name rv=0x..." line per call.
   Build: cc -o p11harness p11harness.c -ldl -lpthread. Usage: p11harness MODULE COMMAND [ARGS]. */

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
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
    } else if (strcmp(cmd, "fork") == 0) {
        /* fork N: the parent opens a session, N children each use it (and re-initialise). */
        int n = argc > 3 ? atoi(argv[3]) : 4, ok = 0;
        CK_SESSION_HANDLE h = 0;
        CK_SESSION_INFO si;
        printf("C_Initialize rv=0x%lx\n", initialize(2, 0, NULL));
        rv = ((fn_open_session)sym("C_OpenSession"))(0, 4 /* CKF_SERIAL_SESSION */, NULL, NULL, &h);
        printf("C_OpenSession rv=0x%lx\n", rv);
        for (int i = 0; i < n; i++) {
            pid_t pid = fork();
            if (pid == 0) {
                CK_RV r1 = ((fn_get_session_info)sym("C_GetSessionInfo"))(h, &si);
                CK_RV r2 = initialize(2, 0, NULL);
                CK_RV r3 = slot_count(&count);
                _exit(r1 == 0 && r2 == 0 && r3 == 0 && count > 0 ? 0 : 1);
            }
            int status = 0;
            waitpid(pid, &status, 0);
            ok += WIFEXITED(status) && WEXITSTATUS(status) == 0;
        }
        printf("children ok=%d of %d\n", ok, n);
        printf("C_GetSessionInfo parent rv=0x%lx\n", ((fn_get_session_info)sym("C_GetSessionInfo"))(h, &si));
    } else {
        fprintf(stderr, "unknown command %s\n", cmd);
        return 2;
    }
    return 0;
}
