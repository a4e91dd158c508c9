/* The C side of libkms-pkcs11.so: starting Python safely inside any host, fork handlers, and the
   PKCS#11 entry points that must work before (or without) Python: C_GetFunctionList and
   C_GetInterface*. build_ffi.py places this after the generated function tables and before the
   generated entry points, which call kms_start() before entering Python. */

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

/* KMS_PY_EXECUTABLE and KMS_PY_VERSION ("3.11") are defined by build_ffi.py. */

static pthread_once_t kms_once = PTHREAD_ONCE_INIT;
static int kms_started = 0;              /* 1 once Python and our cffi module are up */
static int kms_owns_interpreter = 0;     /* 1 when we initialised Python (a C host) */
static __thread int kms_fork_holds_gil = 0;
/* 1 while this thread is inside one of our entry points, and for good in the module's own threads
   (docs/design.md, "Re-entry"). A PKCS#11 call arriving then can only come from inside the
   module's own work: an OpenSSL configuration that loads this module into the OpenSSL the module
   itself uses, or `random = PKCS11-RAND` serving our own TLS. It is refused at once: waiting
   would wait on ourselves. */
static __thread int kms_inside = 0;
static __thread PyGILState_STATE kms_fork_gil;

static void kms_log(const char *msg)
{
    /* stderr only: stdout belongs to the host (and p11-kit remote speaks on it). */
    fprintf(stderr, "pkcs11-kms: %s\n", msg);
}

static CK_RV kms_refuse_reentry(const char *function)
{
    static int logged = 0;
    if (!__atomic_exchange_n(&logged, 1, __ATOMIC_RELAXED))
        fprintf(stderr, "pkcs11-kms: %s called from inside the module's own work (an OpenSSL "
                "configuration that loads this module into itself?): refused\n", function);
    return 0x6UL; /* CKR_FUNCTION_FAILED */
}

/* Copies the NUL-terminated string at `p` into `out` (at most `max` bytes with its NUL) without
   ever faulting: C_Initialize's pReserved may be any pointer (google/pkcs11test passes 1). The
   kernel reads our own memory for us and says EFAULT where nothing is mapped. Returns the length,
   or -1 when the memory is unreadable or holds no NUL within `max` bytes. */
static int kms_vm_usable(void);

static long kms_read_c_string(const void *p, char *out, long max)
{
    long done = 0;
    if (p == NULL || max <= 0)
        return -1;
    if (!kms_vm_usable()) { /* no process_vm_readv here (docs/design.md, "Host pointers") */
        size_t len = strnlen((const char *)p, (size_t)max);
        if (len == (size_t)max)
            return -1;
        memcpy(out, p, len + 1);
        return (long)len;
    }
    while (done < max) {
        uintptr_t at = (uintptr_t)p + (uintptr_t)done;
        long chunk = (long)(4096 - at % 4096); /* never across a page we have not checked */
        struct iovec local, remote;
        char *nul;
        if (chunk > max - done)
            chunk = max - done;
        local.iov_base = out + done;
        local.iov_len = (size_t)chunk;
        remote.iov_base = (void *)at;
        remote.iov_len = (size_t)chunk;
        if (process_vm_readv(getpid(), &local, 1, &remote, 1, 0) != (ssize_t)chunk)
            return -1;
        nul = memchr(out + done, 0, (size_t)chunk);
        if (nul != NULL)
            return (long)(nul - out);
        done += chunk;
    }
    return -1;
}

/* docs/design.md, "Host pointers": the abi layer never dereferences a pointer a host passed us.
   kms_copy_in / kms_copy_out copy `n` bytes through the kernel (process_vm_readv/writev on our
   own pid), which answers EFAULT for NULL, (void*)1, 0xdeadbeef, (void*)-1 or an unmapped page
   instead of faulting. 0 when all `n` bytes were copied, -1 otherwise. Where the calls are
   forbidden (ENOSYS, or EPERM under a seccomp profile; probed once), they fall back to memcpy. */
static int kms_vm_state = 0; /* 0 not probed, 1 the syscalls work, 2 memcpy fallback */

static int kms_vm_usable(void)
{
    int state = __atomic_load_n(&kms_vm_state, __ATOMIC_ACQUIRE);
    if (state == 0) {
        char probe = 1, copy = 0;
        struct iovec local = {&copy, 1}, remote = {&probe, 1};
        state = 1;
        if ((process_vm_readv(getpid(), &local, 1, &remote, 1, 0) != 1 ||
             process_vm_writev(getpid(), &local, 1, &remote, 1, 0) != 1) &&
            (errno == ENOSYS || errno == EPERM)) {
            state = 2;
            kms_log("process_vm_readv/writev are not allowed here: host pointers are not checked");
        }
        __atomic_store_n(&kms_vm_state, state, __ATOMIC_RELEASE);
    }
    return state == 1;
}

static int kms_vm_copy(void *ours, const void *theirs, size_t n, int out)
{
    struct iovec local, remote;
    ssize_t done;
    if (n == 0)
        return 0;
    if (theirs == NULL || ours == NULL)
        return -1;
    if (!kms_vm_usable()) {
        if (out)
            memcpy((void *)theirs, ours, n);
        else
            memcpy(ours, theirs, n);
        return 0;
    }
    local.iov_base = ours;
    local.iov_len = n;
    remote.iov_base = (void *)theirs;
    remote.iov_len = n;
    /* One call: the kernel copies page by page and stops short at the first unmapped page. The
       pid is asked every time (~50 ns): no cache can go stale through a fork that skips the
       at-fork handlers. */
    done = out ? process_vm_writev(getpid(), &local, 1, &remote, 1, 0)
               : process_vm_readv(getpid(), &local, 1, &remote, 1, 0);
    return done == (ssize_t)n ? 0 : -1;
}

static int kms_copy_in(void *dst, const void *src, size_t n)
{
    return kms_vm_copy(dst, src, n, 0);
}

static int kms_copy_out(void *dst, const void *src, size_t n)
{
    return kms_vm_copy((void *)src, dst, n, 1);
}

/* The module's own threads (the KMS event loop and its I/O pool) call this first (through cffi). */
static void kms_mark_module_thread(void)
{
    kms_inside = 1;
}

/* docs/design.md, "Starting the interpreter": hosts dlopen us RTLD_LOCAL, which hides libpython
   from Python's own extension modules. Re-open libpython into the global scope. */
static void kms_promote_libpython(void)
{
    Dl_info info;
    if (dladdr((void *)&Py_IsInitialized, &info) && info.dli_fname != NULL)
        (void)dlopen(info.dli_fname, RTLD_NOW | RTLD_GLOBAL | RTLD_NOLOAD);
}

/* docs/design.md, "Fork": hold the GIL across fork() so the child does not inherit it locked by a
   thread that no longer exists. Skipped when the forking thread already holds it (os.fork). */
static void kms_before_fork(void)
{
    kms_fork_holds_gil = 0;
    if (!kms_owns_interpreter || !Py_IsInitialized() || PyGILState_Check())
        return;
    kms_fork_gil = PyGILState_Ensure();
    PyOS_BeforeFork();
    kms_fork_holds_gil = 1;
}

static void kms_after_fork_parent(void)
{
    if (!kms_fork_holds_gil)
        return;
    kms_fork_holds_gil = 0;
    PyOS_AfterFork_Parent();
    PyGILState_Release(kms_fork_gil);
}

static void kms_after_fork_child(void)
{
    if (!kms_fork_holds_gil)
        return;
    kms_fork_holds_gil = 0;
    PyOS_AfterFork_Child();
    PyGILState_Release(kms_fork_gil);
}

/* 1 once the process has begun to exit (kms_at_exit ran). Python reads it (hostsafe.exiting):
   from then on a C_Finalize only forgets the module's state, and no KMS call runs. */
static int kms_exit_begun = 0;

static int kms_exiting(void)
{
    return __atomic_load_n(&kms_exit_begun, __ATOMIC_ACQUIRE);
}

/* At exit, hold the GIL for good: no Python thread (the KMS event loop freeing a TLS connection)
   may run while the host's exit handlers tear OpenSSL down under it. atexit handlers run in
   reverse order, so this one, registered at the first call, runs before OpenSSL's cleanup. A
   host's later C_Finalize from the exiting thread still works: the GIL is re-entrant there, and
   with kms_exit_begun set it neither waits (which would release the GIL) nor touches a socket
   (docs/design.md, "Threads"). */
static void kms_at_exit(void)
{
    __atomic_store_n(&kms_exit_begun, 1, __ATOMIC_RELEASE);
    if (Py_IsInitialized())
        (void)PyGILState_Ensure();
}

/* docs/design.md, "Starting the interpreter" and "Signals": an isolated interpreter bound to the
   Python the module was built for; no signal handlers; the host's SIGINT disposition survives. */
static int kms_start_interpreter(void)
{
    PyStatus status;
    PyConfig config;

    PyConfig_InitIsolatedConfig(&config);
    config.install_signal_handlers = 0;
    config.site_import = 1;
    config.parse_argv = 0;
    config.write_bytecode = 0;
    status = PyConfig_SetBytesString(&config, &config.executable, KMS_PY_EXECUTABLE);
    if (!PyStatus_Exception(status))
        status = PyConfig_SetBytesString(&config, &config.program_name, KMS_PY_EXECUTABLE);
    if (!PyStatus_Exception(status))
        status = Py_InitializeFromConfig(&config);
    PyConfig_Clear(&config);
    if (PyStatus_Exception(status)) {
        /* Never Py_ExitStatusException(): that would exit the host. */
        fprintf(stderr, "pkcs11-kms: cannot start Python (%s): %s\n", KMS_PY_EXECUTABLE,
                status.err_msg ? status.err_msg : "unknown error");
        return -1;
    }
    (void)PyEval_SaveThread();
    kms_owns_interpreter = 1;
    return 0;
}

/* docs/design.md, "Python hosts": in a Python program, make the module's package and its
   dependencies importable from the environment the module was built in (abi/python_host.py,
   embedded as KMS_PYTHON_HOST_SOURCE by build_ffi.py). 0 when ready; -1 after one log line. */
static int kms_prepare_python_host(void)
{
    static const char source[] = KMS_PYTHON_HOST_SOURCE;
    Dl_info self;
    PyGILState_STATE gil;
    PyObject *globals, *path = NULL, *result = NULL, *problem;
    int rc = -1;

    if (!dladdr((void *)&kms_prepare_python_host, &self) || self.dli_fname == NULL) {
        kms_log("cannot find the library's own path");
        return -1;
    }
    gil = PyGILState_Ensure();
    globals = PyDict_New();
    if (globals != NULL)
        path = PyUnicode_DecodeFSDefault(self.dli_fname);
    if (path != NULL && PyDict_SetItemString(globals, "__builtins__", PyEval_GetBuiltins()) == 0 &&
        PyDict_SetItemString(globals, "LIBRARY", path) == 0)
        result = PyRun_String(source, Py_file_input, globals, globals);
    if (result == NULL) {
        PyErr_Clear();
        kms_log("cannot prepare this Python program for the module");
    } else {
        problem = PyDict_GetItemString(globals, "PROBLEM"); /* borrowed */
        if (problem == Py_None) {
            rc = 0;
        } else {
            const char *text = problem != NULL ? PyUnicode_AsUTF8(problem) : NULL;
            PyErr_Clear();
            fprintf(stderr, "pkcs11-kms: %s\n", text != NULL ? text : "cannot start in this Python program");
        }
    }
    Py_XDECREF(result);
    Py_XDECREF(path);
    Py_XDECREF(globals);
    PyGILState_Release(gil);
    return rc;
}

static void kms_do_start(void)
{
    struct sigaction saved_sigint;
    int restore_sigint = 0, started;

    kms_promote_libpython();
    if (Py_IsInitialized()) {
        /* docs/design.md, "Python hosts": share the host's interpreter if it is our X.Y. */
        const char *running = Py_GetVersion();
        size_t n = strlen(KMS_PY_VERSION);
        if (strncmp(running, KMS_PY_VERSION, n) != 0 || running[n] != '.') {
            kms_log("the host runs another Python version than this module was built for "
                    "(" KMS_PY_VERSION "); refusing to start");
            return;
        }
        if (kms_prepare_python_host() != 0)
            return;
    } else {
        restore_sigint = sigaction(SIGINT, NULL, &saved_sigint) == 0;
        if (kms_start_interpreter() != 0)
            return;
    }
    started = cffi_start_python();
    if (restore_sigint) /* also when the package failed to load: Ctrl-C must still stop the host */
        (void)sigaction(SIGINT, &saved_sigint, NULL);
    if (started != 0) {
        kms_log("cannot load the pkcs11_kms Python package (see the error above)");
        return;
    }
    if (kms_owns_interpreter) {
        (void)pthread_atfork(kms_before_fork, kms_after_fork_parent, kms_after_fork_child);
        (void)atexit(kms_at_exit);
    }
    kms_started = 1;
}

/* 0 when Python is ready; -1 (the caller returns CKR_GENERAL_ERROR) when it never will be. */
static int kms_start(void)
{
    (void)pthread_once(&kms_once, kms_do_start);
    return kms_started ? 0 : -1;
}

static CK_INTERFACE kms_interfaces[] = {
    {(CK_CHAR *)"PKCS 11", (CK_VOID_PTR)&kms_function_list_3_0, 0},
    {(CK_CHAR *)"PKCS 11", (CK_VOID_PTR)&kms_function_list_2_40, 0},
};
#define KMS_INTERFACE_COUNT (sizeof(kms_interfaces) / sizeof(kms_interfaces[0]))

/* The C-only entry points read and write the host's pointers with kms_copy_in/out too: a wild
   one is CKR_ARGUMENTS_BAD, never a fault (docs/design.md, "Host pointers"). */
KMS_EXPORT CK_RV C_GetFunctionList(CK_VOID_PTR_PTR ppFunctionList)
{
    CK_VOID_PTR list = (CK_VOID_PTR)&kms_function_list_2_40;
    if (kms_copy_out(ppFunctionList, &list, sizeof(list)) != 0)
        return 0x7UL; /* CKR_ARGUMENTS_BAD */
    return 0;
}

KMS_EXPORT CK_RV C_GetInterfaceList(CK_INTERFACE_PTR pInterfacesList, CK_ULONG_PTR pulCount)
{
    CK_ULONG count = KMS_INTERFACE_COUNT, capacity = 0;
    if (pInterfacesList != NULL) {
        if (kms_copy_in(&capacity, pulCount, sizeof(capacity)) != 0)
            return 0x7UL; /* CKR_ARGUMENTS_BAD */
        if (capacity >= count &&
            kms_copy_out(pInterfacesList, kms_interfaces, sizeof(kms_interfaces)) != 0)
            return 0x7UL;
    }
    if (kms_copy_out(pulCount, &count, sizeof(count)) != 0)
        return 0x7UL;
    if (pInterfacesList != NULL && capacity < count)
        return 0x150UL; /* CKR_BUFFER_TOO_SMALL */
    return 0;
}

KMS_EXPORT CK_RV C_GetInterface(CK_UTF8CHAR_PTR pInterfaceName, CK_VERSION_PTR pVersion,
                                CK_INTERFACE_PTR_PTR ppInterface, CK_FLAGS flags)
{
    size_t i;
    char name[64];
    CK_VERSION version;
    CK_INTERFACE_PTR found;
    if (ppInterface == NULL)
        return 0x7UL; /* CKR_ARGUMENTS_BAD */
    /* unreadable, or longer than any name we have: no such interface either way */
    if (pInterfaceName != NULL && kms_read_c_string(pInterfaceName, name, sizeof(name)) < 0)
        return 0x7UL;
    if (pVersion != NULL && kms_copy_in(&version, pVersion, sizeof(version)) != 0)
        return 0x7UL;
    for (i = 0; i < KMS_INTERFACE_COUNT; i++) {
        CK_VERSION *v = (CK_VERSION *)kms_interfaces[i].pFunctionList;
        if (pInterfaceName != NULL &&
            strcmp(name, (const char *)kms_interfaces[i].pInterfaceName) != 0)
            continue;
        if (pVersion != NULL && (version.major != v->major || version.minor != v->minor))
            continue;
        if ((kms_interfaces[i].flags & flags) != flags)
            continue;
        found = &kms_interfaces[i];
        if (kms_copy_out(ppInterface, &found, sizeof(found)) != 0)
            return 0x7UL;
        return 0;
    }
    return 0x7UL; /* CKR_ARGUMENTS_BAD: no such interface */
}
