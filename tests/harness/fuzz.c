/* A seeded, repeatable fuzz host: calls every PKCS#11 function of the module through its function
   tables with NULL and wild pointers, invalid and closed handles, wrong and huge lengths, malformed
   templates and mechanism parameters, and in the wrong order. Every return code must be in that
   function's allowed set (read from ALLOWED, the output of `python -m pkcs11_kms.core.returns`),
   CKR_OK where an argument makes success impossible is a violation too, and every 200 calls a
   valid ECDSA signature must still work.

   Build: cc -O1 -o fuzz fuzz.c -ldl -lpthread
   Usage: fuzz MODULE ALLOWED SEED CALLS [-v]   (-v: one line per call on stderr, for a replay)
          FUZZ_HANG_SECONDS (default 60): a call that takes longer is a hang.
   Exit:  0 when no violation and every canary worked; 1 otherwise; 2 usage or setup error;
          4 hang; a crash dies by its signal after naming the call and the seed on stderr.

   "Wild" means unmapped or read-only memory only: a writable pointer with a wrong length is
   undetectable, so every buffer here sits at the end of a mapping followed by a PROT_NONE page,
   and a claimed length beyond a buffer can only run into that page. */

#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "../../cdefs/pkcs11_types.h"
#include "../../cdefs/pkcs11_functions.h" /* prototypes: used only for __typeof__ */

/* Function-table order (cdefs/pkcs11_functions.h); checked against dlsym at start. */
#define FUNCTIONS(X)                                                                              \
    X(C_Initialize) X(C_Finalize) X(C_GetInfo) X(C_GetFunctionList) X(C_GetSlotList)               \
    X(C_GetSlotInfo) X(C_GetTokenInfo) X(C_GetMechanismList) X(C_GetMechanismInfo) X(C_InitToken)  \
    X(C_InitPIN) X(C_SetPIN) X(C_OpenSession) X(C_CloseSession) X(C_CloseAllSessions)              \
    X(C_GetSessionInfo) X(C_GetOperationState) X(C_SetOperationState) X(C_Login) X(C_Logout)       \
    X(C_CreateObject) X(C_CopyObject) X(C_DestroyObject) X(C_GetObjectSize)                        \
    X(C_GetAttributeValue) X(C_SetAttributeValue) X(C_FindObjectsInit) X(C_FindObjects)            \
    X(C_FindObjectsFinal) X(C_EncryptInit) X(C_Encrypt) X(C_EncryptUpdate) X(C_EncryptFinal)       \
    X(C_DecryptInit) X(C_Decrypt) X(C_DecryptUpdate) X(C_DecryptFinal) X(C_DigestInit)            \
    X(C_Digest) X(C_DigestUpdate) X(C_DigestKey) X(C_DigestFinal) X(C_SignInit) X(C_Sign)          \
    X(C_SignUpdate) X(C_SignFinal) X(C_SignRecoverInit) X(C_SignRecover) X(C_VerifyInit)           \
    X(C_Verify) X(C_VerifyUpdate) X(C_VerifyFinal) X(C_VerifyRecoverInit) X(C_VerifyRecover)       \
    X(C_DigestEncryptUpdate) X(C_DecryptDigestUpdate) X(C_SignEncryptUpdate)                       \
    X(C_DecryptVerifyUpdate) X(C_GenerateKey) X(C_GenerateKeyPair) X(C_WrapKey) X(C_UnwrapKey)     \
    X(C_DeriveKey) X(C_SeedRandom) X(C_GenerateRandom) X(C_GetFunctionStatus) X(C_CancelFunction)  \
    X(C_WaitForSlotEvent) X(C_GetInterfaceList) X(C_GetInterface) X(C_LoginUser)                   \
    X(C_SessionCancel) X(C_MessageEncryptInit) X(C_EncryptMessage) X(C_EncryptMessageBegin)        \
    X(C_EncryptMessageNext) X(C_MessageEncryptFinal) X(C_MessageDecryptInit) X(C_DecryptMessage)   \
    X(C_DecryptMessageBegin) X(C_DecryptMessageNext) X(C_MessageDecryptFinal)                      \
    X(C_MessageSignInit) X(C_SignMessage) X(C_SignMessageBegin) X(C_SignMessageNext)               \
    X(C_MessageSignFinal) X(C_MessageVerifyInit) X(C_VerifyMessage) X(C_VerifyMessageBegin)        \
    X(C_VerifyMessageNext) X(C_MessageVerifyFinal)

#define AS_INDEX(n) I_##n,
#define AS_NAME(n) #n,
enum { FUNCTIONS(AS_INDEX) NFUNC };
static const char *const NAMES[NFUNC] = {FUNCTIONS(AS_NAME)};
#define N240 68 /* the v2.40 table holds the first 68 */

struct table {
    CK_VERSION version;
    void *fn[NFUNC];
};
static struct table *t30, *t240;

/* ---- constants (pkcs11.h) ---- */
#define CKR_OK 0x0UL
#define CKR_ALREADY_INITIALIZED 0x191UL
#define CKF_SERIAL_SESSION 0x4UL
#define CKF_RW_SESSION 0x2UL
#define CKF_OS_LOCKING_OK 0x2UL
#define CKF_DONT_BLOCK 0x1UL
#define CKA_CLASS 0x0UL
#define CKA_TOKEN 0x1UL
#define CKA_PRIVATE 0x2UL
#define CKA_LABEL 0x3UL
#define CKA_VALUE 0x11UL
#define CKA_CERTIFICATE_TYPE 0x80UL
#define CKA_KEY_TYPE 0x100UL
#define CKA_ID 0x102UL
#define CKA_SENSITIVE 0x103UL
#define CKA_ENCRYPT 0x104UL
#define CKA_DECRYPT 0x105UL
#define CKA_SIGN 0x108UL
#define CKA_MODULUS 0x120UL
#define CKA_PUBLIC_EXPONENT 0x122UL
#define CKA_PRIVATE_EXPONENT 0x123UL
#define CKA_EC_PARAMS 0x180UL
#define CKA_EC_POINT 0x181UL
#define CKA_PUBLIC_KEY_INFO 0x129UL
#define CKO_CERTIFICATE 1UL
#define CKO_PUBLIC_KEY 2UL
#define CKO_PRIVATE_KEY 3UL
#define CKK_RSA 0UL
#define CKK_EC 3UL
#define CKM_RSA_PKCS 0x1UL
#define CKM_RSA_X_509 0x3UL
#define CKM_RSA_PKCS_OAEP 0x9UL
#define CKM_RSA_PKCS_PSS 0xdUL
#define CKM_SHA256_RSA_PKCS 0x40UL
#define CKM_SHA256_RSA_PKCS_PSS 0x43UL
#define CKM_SHA_1 0x220UL
#define CKM_SHA256 0x250UL
#define CKM_SHA384 0x260UL
#define CKM_ECDSA 0x1041UL
#define CKM_ECDSA_SHA256 0x1044UL
#define CKM_AES_GCM 0x1087UL
#define CKM_EC_KEY_PAIR_GEN 0x1040UL
#define CKM_RSA_PKCS_KEY_PAIR_GEN 0x0UL
#define CKG_MGF1_SHA1 0x1UL
#define CKG_MGF1_SHA256 0x2UL
#define CKZ_DATA_SPECIFIED 0x1UL
#define ULMAX ((CK_ULONG)-1)
#define HUGE40 ((CK_ULONG)1 << 40)
#define PAGE 4096UL

/* ---- the run's state ---- */
static void *lib;
static unsigned long seed;
static unsigned long long rng_state;
static unsigned long call_index;       /* calls made so far, canaries included */
static int verbose;
static char desc[768];                 /* the current call, for the crash handler */
static size_t desc_len;
static const char *must_fail;          /* why CKR_OK would be wrong for the current call */
static volatile sig_atomic_t in_call = -1;
static volatile long long call_started_ms;
static long hang_seconds = 60;         /* FUZZ_HANG_SECONDS; KMS calls have their own deadlines */

static CK_ULONG allowed[NFUNC][96];
static int allowed_n[NFUNC];
static unsigned long counts[NFUNC];
static unsigned long not_supported_streak[NFUNC]; /* CKR_FUNCTION_NOT_SUPPORTED in a row */
static unsigned long violations;
static char violation_lines[50][900];
static int violation_lines_n;
static struct { CK_RV rv; unsigned long n; } histogram[256];
static int histogram_n;
static unsigned long canaries, canaries_failed;

static int initialized;                /* what the harness believes */
static CK_SLOT_ID slots[8];
static CK_ULONG nslots;
#define POOL 12
static struct { CK_SESSION_HANDLE h; CK_SLOT_ID slot; } open_s[POOL];
static int open_n;
static CK_SESSION_HANDLE closed_s[64];
static int closed_n;
static CK_OBJECT_HANDLE objects[64];
static CK_ULONG objects_n;
static CK_OBJECT_HANDLE dead_objects[32];
static int dead_n;
static CK_OBJECT_HANDLE ec_key, rsa_key, dec_key, ec_pub, rsa_pub, dec_pub;
static unsigned char ec_point[160];
static CK_ULONG ec_point_len;

/* Memory: arenas each followed by a PROT_NONE page; a read-only page; an unmapped page. */
struct arena { unsigned char *base; size_t size; };
static struct arena in_a, out_a, tmpl_a, val_a, mech_a;
static unsigned char *ro_page;         /* PROT_READ, followed by PROT_NONE */
static unsigned char *unmapped;

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- random numbers: splitmix64, so a seed replays the same calls ---- */
static unsigned long long next64(void)
{
    unsigned long long z = (rng_state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}
static unsigned long rnd(unsigned long n) { return n ? (unsigned long)(next64() % n) : 0; }
static int chance(int percent) { return (int)rnd(100) < percent; }
#define PICK(array) (array)[rnd(sizeof(array) / sizeof((array)[0]))]

/* ---- the call record: text for the crash handler, checks after the call ---- */
static void desc_add(const char *fmt, ...)
{
    va_list ap;
    int n;
    if (desc_len >= sizeof(desc) - 1)
        return;
    va_start(ap, fmt);
    n = vsnprintf(desc + desc_len, sizeof(desc) - desc_len, fmt, ap);
    va_end(ap);
    if (n > 0)
        desc_len += (size_t)n < sizeof(desc) - desc_len ? (size_t)n : sizeof(desc) - desc_len - 1;
}

static void desc_reset(void)
{
    desc_len = 0;
    desc[0] = 0;
    must_fail = NULL;
}

static void fail_if_ok(const char *why)
{
    if (must_fail == NULL)
        must_fail = why;
}

static void *fn_of(int i)
{
    return i < N240 && chance(30) ? t240->fn[i] : t30->fn[i];
}

static void write_str(const char *s) { ssize_t r = write(2, s, strlen(s)); (void)r; }

static void write_ulong(unsigned long v)
{
    char buf[24];
    int i = 23;
    buf[i] = 0;
    do
        buf[--i] = (char)('0' + v % 10);
    while ((v /= 10) && i > 0);
    write_str(buf + i);
}

static void begin(int f)
{
    char head[96];
    counts[f]++;
    call_index++;
    /* The description so far holds the arguments; put the call's identity in front of it. */
    snprintf(head, sizeof(head), "call #%lu seed=%lu %s(", call_index, seed, NAMES[f]);
    size_t hl = strlen(head);
    if (hl + desc_len + 2 >= sizeof(desc)) /* long arguments lose their end, never the call */
        desc_len = sizeof(desc) - hl - 2;
    memmove(desc + hl, desc, desc_len);
    memcpy(desc, head, hl);
    desc_len += hl;
    desc[desc_len++] = ')';
    desc[desc_len] = 0;
    if (verbose)
        fprintf(stderr, "%s\n", desc);
    call_started_ms = now_ms();
    __atomic_store_n(&in_call, f, __ATOMIC_SEQ_CST);
}

static void histogram_add(CK_RV rv)
{
    for (int i = 0; i < histogram_n; i++)
        if (histogram[i].rv == rv) {
            histogram[i].n++;
            return;
        }
    if (histogram_n < 256) {
        histogram[histogram_n].rv = rv;
        histogram[histogram_n++].n = 1;
    }
}

static void violation(const char *what, CK_RV rv)
{
    violations++;
    if (violation_lines_n < 50)
        snprintf(violation_lines[violation_lines_n++], sizeof(violation_lines[0]),
                 "violation: %s rv=0x%lx in %s", what, rv, desc);
}

static CK_RV end(int f, CK_RV rv)
{
    int ok = 0;
    __atomic_store_n(&in_call, -1, __ATOMIC_SEQ_CST);
    histogram_add(rv);
    /* 0x54: CKR_FUNCTION_NOT_SUPPORTED */
    not_supported_streak[f] = rv == 0x54UL ? not_supported_streak[f] + 1 : 0;
    for (int i = 0; i < allowed_n[f]; i++)
        ok |= allowed[f][i] == rv;
    if (!ok)
        violation("not in the allowed set", rv);
    else if (rv == CKR_OK && must_fail != NULL)
        violation(must_fail, rv);
    if (verbose)
        fprintf(stderr, "  rv=0x%lx\n", rv);
    desc_reset();
    return rv;
}

/* CALL(C_Sign, h, ...): through the function table, with the record before and the checks after. */
#define CALL(name, ...) \
    (begin(I_##name), end(I_##name, ((__typeof__(&name))fn_of(I_##name))(__VA_ARGS__)))

/* ---- crashes and hangs ---- */
static void on_crash(int sig)
{
    write_str("\nfuzz: CRASH signal ");
    write_ulong((unsigned long)sig);
    write_str(in_call >= 0 ? " during " : " after ");
    write_str(desc[0] ? desc : "(no call)");
    write_str("\nfuzz: replay with seed ");
    write_ulong(seed);
    write_str(" up to call #");
    write_ulong(call_index);
    write_str("\n");
    signal(sig, SIG_DFL);
    raise(sig);
}

static void *watchdog(void *arg)
{
    (void)arg;
    for (;;) {
        struct timespec one = {1, 0};
        int f = __atomic_load_n(&in_call, __ATOMIC_SEQ_CST);
        long long secs = (now_ms() - call_started_ms) / 1000;
        if (f >= 0 && secs >= hang_seconds) {
            fprintf(stderr, "\nfuzz: HANG in %s after %lld s: %s\nfuzz: replay with seed %lu\n",
                    NAMES[f], secs, desc, seed);
            fflush(stderr);
            _exit(4);
        }
        nanosleep(&one, NULL);
    }
    return NULL;
}

static void install_handlers(void)
{
    static unsigned char altstack[65536];
    stack_t ss = {.ss_sp = altstack, .ss_size = sizeof(altstack), .ss_flags = 0};
    struct sigaction sa;
    int sigs[] = {SIGSEGV, SIGBUS, SIGABRT, SIGFPE, SIGILL};
    sigaltstack(&ss, NULL);
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_crash;
    sa.sa_flags = SA_ONSTACK;
    for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
        sigaction(sigs[i], &sa, NULL);
}

/* ---- memory ---- */
static struct arena make_arena(size_t pages)
{
    struct arena a;
    unsigned char *p = mmap(NULL, (pages + 1) * PAGE, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED || mprotect(p + pages * PAGE, PAGE, PROT_NONE) != 0) {
        perror("mmap");
        exit(2);
    }
    a.base = p;
    a.size = pages * PAGE;
    return a;
}

/* `size` bytes that end where the arena's guard page begins. */
static void *tail(struct arena *a, size_t size) { return a->base + a->size - size; }

static void setup_memory(void)
{
    unsigned char *p;
    in_a = make_arena(16);
    out_a = make_arena(16);
    tmpl_a = make_arena(2);
    val_a = make_arena(4);
    mech_a = make_arena(1);
    for (size_t i = 0; i < in_a.size; i++)
        in_a.base[i] = (unsigned char)next64();
    p = mmap(NULL, 2 * PAGE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED || mprotect(p + PAGE, PAGE, PROT_NONE) != 0)
        exit(2);
    ro_page = p;
    /* Inaccessible, and kept so: a page given back with munmap() can be mapped again by the
       module's own allocations (it was, on Debian 13), and a write there then succeeds. */
    unmapped = mmap(NULL, PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (unmapped == MAP_FAILED)
        exit(2);
}

/* Unmapped, inaccessible or non-canonical addresses. */
static void *wild(const char **label)
{
    switch (rnd(6)) {
    case 0: *label = "wild:1"; return (void *)1;
    case 1: *label = "wild:0xdeadbeef"; return (void *)0xdeadbeefUL;
    case 2: *label = "wild:-1"; return (void *)-1L;
    case 3: *label = "wild:noaccess"; return unmapped;
    case 4: *label = "wild:noaccess+17"; return unmapped + 17;
    default: *label = "wild:noncanonical"; return (void *)0x8000000000001000UL;
    }
}

/* pick_output flags */
#define OUT_RO 1       /* the read-only page is a third bad choice */
#define OUT_OPTIONAL 2 /* a bad choice may still give CKR_OK (a NULL buffer asks for a length) */
#define OUT_VALUE 4    /* `ok` is a CK_ULONG_PTR: describe the good choice by its value */

/* A pointer the call writes through: NULL, a wild pointer and (OUT_RO) the read-only page, each
   with chance 1/n, else `ok`. Described as NAME=NULL, NAME=wild:..., NAME=ro, or NAME=ok
   (NAME=value with OUT_VALUE). A bad choice makes CKR_OK a violation, unless OUT_OPTIONAL. */
static void *pick_output(void *ok, unsigned long n, const char *name, int flags)
{
    const char *w, *why;
    void *p;
    unsigned long r = rnd(n);
    if (r == 0) {
        p = NULL;
        w = "NULL";
        why = "CKR_OK with a NULL output";
    } else if (r == 1) {
        p = wild(&w);
        why = "CKR_OK with a wild output";
    } else if (r == 2 && (flags & OUT_RO)) {
        p = ro_page;
        w = "ro";
        why = "CKR_OK with a read-only output";
    } else {
        if (flags & OUT_VALUE)
            desc_add("%s=%lu", name, *(CK_ULONG *)ok);
        else
            desc_add("%s=ok", name);
        return ok;
    }
    desc_add("%s=%s", name, w);
    if (!(flags & OUT_OPTIONAL))
        fail_if_ok(why);
    return p;
}

static CK_ULONG odd_length(void)
{
    static const CK_ULONG lengths[] = {0, 1, 7, 16, 20, 31, 32, 33, 48, 51, 64, 65, 128, 255,
                                       256, 384, 512, 1024, 1025, 4096, 4097, 65536, ULMAX,
                                       ULMAX - 1, HUGE40, 0x80000000UL};
    return PICK(lengths);
}

/* Inputs that mean something, so that calls get past the checks to KMS: set by meaningful()
   for the next in_data(). */
static const unsigned char *good_bytes;
static CK_ULONG good_bytes_len;
static unsigned char ciphertext[512]; /* the last C_Encrypt output (RSA-OAEP) */
static CK_ULONG ciphertext_len;
static const unsigned char DIGEST[32] = "fuzz canary digest, 32 bytes...";
static unsigned char last_signature[256]; /* the last canary's, over DIGEST */
static CK_ULONG last_signature_len;

/* An input buffer and its length. */
static void in_data(CK_BYTE_PTR *p, CK_ULONG *len, CK_ULONG good_len)
{
    const char *w;
    if (good_len > 16384)
        good_len = 16384;
    switch (rnd(12)) {
    case 0: case 1: case 2:
        if (good_bytes != NULL) {
            good_len = good_bytes_len;
            memcpy(tail(&in_a, good_len), good_bytes, good_len);
        }
        *len = good_len;
        *p = tail(&in_a, good_len ? good_len : 1);
        desc_add("in=ok/%lu", *len);
        break;
    case 3:
        *len = odd_length();
        *p = *len <= 16384 ? tail(&in_a, *len ? *len : 1) : tail(&in_a, 64);
        desc_add("in=buf/%lu", *len);
        break;
    case 4: *p = NULL; *len = 0; desc_add("in=NULL/0"); break;
    case 5: *p = NULL; *len = 1 + rnd(512); desc_add("in=NULL/%lu", *len); break;
    case 6: *p = wild(&w); *len = 1 + rnd(512); desc_add("in=%s/%lu", w, *len); break;
    case 7: *p = wild(&w); *len = 0; desc_add("in=%s/0", w); break;
    case 8:
        *p = tail(&in_a, 16);
        *len = 16 + 1 + rnd(8192);
        desc_add("in=short16/%lu", *len);
        break;
    case 9:
        *p = tail(&in_a, 64);
        *len = chance(50) ? ULMAX : HUGE40;
        desc_add("in=buf64/%lu", *len);
        break;
    case 10: *p = ro_page; *len = 1 + rnd(PAGE); desc_add("in=ro/%lu", *len); break;
    default: *p = ro_page + PAGE - 8; *len = 9 + rnd(PAGE); desc_add("in=ro-end/%lu", *len); break;
    }
    good_bytes = NULL;
}

/* An output buffer and its length pointer (the two-call convention). */
static CK_ULONG out_len_value;
static void out_data(CK_BYTE_PTR *p, CK_ULONG_PTR *lenp)
{
    const char *w;
    static const CK_ULONG claims[] = {0, 1, 16, 31, 32, 63, 64, 255, 256, 383, 384, 512, 4096,
                                      8192, ULMAX, HUGE40};
    switch (rnd(10)) {
    case 0: case 1: *p = NULL; desc_add("out=NULL"); break;
    case 2: case 3: case 4: *p = tail(&out_a, 8192); desc_add("out=buf8192"); break;
    case 5: *p = tail(&out_a, 16); desc_add("out=short16"); break;
    case 6: *p = ro_page; desc_add("out=ro"); break;
    case 7: *p = wild(&w); desc_add("out=%s", w); break;
    default: *p = tail(&out_a, 512); desc_add("out=buf512"); break;
    }
    out_len_value = PICK(claims);
    *lenp = pick_output(&out_len_value, 10, " len", OUT_RO | OUT_VALUE);
}

/* A fixed-size output structure (CK_INFO and friends). */
static void *out_struct(size_t size)
{
    if (rnd(8) == 0) { /* the fourth bad choice: 1/8, like NULL, wild and ro below */
        desc_add("info=short8");
        fail_if_ok("CKR_OK with an output that ends at a guard page");
        return tail(&out_a, 8);
    }
    return pick_output(tail(&out_a, size), 7, "info", OUT_RO);
}

/* ---- handles ---- */
static int is_open(CK_SESSION_HANDLE h)
{
    for (int i = 0; i < open_n; i++)
        if (open_s[i].h == h)
            return 1;
    return 0;
}

static int open_valid(CK_SLOT_ID s, CK_SESSION_HANDLE *h);

static CK_SESSION_HANDLE session(void)
{
    if (!initialized)
        fail_if_ok("CKR_OK while not initialized");
    if (initialized && open_n < 3 && nslots > 0) { /* keep valid sessions around */
        char saved[sizeof(desc)];
        size_t saved_len = desc_len;
        const char *saved_fail = must_fail;
        CK_SESSION_HANDLE fresh;
        CK_SLOT_ID s = slots[rnd(nslots)];
        memcpy(saved, desc, desc_len + 1);
        desc_reset();
        if (open_valid(s, &fresh)) {
            open_s[open_n].h = fresh;
            open_s[open_n++].slot = s;
        }
        memcpy(desc, saved, saved_len + 1);
        desc_len = saved_len;
        must_fail = saved_fail;
    }
    int r = (int)rnd(20);
    if (r < 15 && open_n > 0) {
        int i = (int)rnd((unsigned long)open_n);
        desc_add("h=open:%lu/slot%lu", open_s[i].h, open_s[i].slot);
        return open_s[i].h;
    }
    CK_SESSION_HANDLE h;
    if (r < 17 && closed_n > 0) {
        h = closed_s[rnd((unsigned long)closed_n)];
        desc_add("h=closed:%lu", h);
    } else {
        static const CK_SESSION_HANDLE bad[] = {0, 0x7fffffff, ULMAX, 0xdeadbeef, 1UL << 40};
        h = chance(50) ? PICK(bad) : 1000000 + rnd(1000000);
        desc_add("h=bad:%lu", h);
    }
    if (!is_open(h))
        fail_if_ok("CKR_OK with an invalid session handle");
    return h;
}

static CK_SLOT_ID slot(void)
{
    if (nslots > 0 && chance(75)) {
        CK_SLOT_ID s = slots[rnd(nslots)];
        desc_add("slot=%lu", s);
        return s;
    }
    static const CK_SLOT_ID bad[] = {99, 1000, ULMAX, 0x80000000UL};
    CK_SLOT_ID s = PICK(bad);
    desc_add("slot=bad:%lu", s);
    fail_if_ok("CKR_OK with an invalid slot");
    return s;
}

static CK_OBJECT_HANDLE object(void)
{
    int r = (int)rnd(10);
    CK_OBJECT_HANDLE h;
    if (r < 6 && objects_n > 0) {
        h = objects[rnd(objects_n)];
        desc_add(" obj=%lu", h);
        return h;
    }
    if (r < 8 && dead_n > 0) {
        h = dead_objects[rnd((unsigned long)dead_n)];
        desc_add(" obj=destroyed:%lu", h);
        return h;
    }
    static const CK_OBJECT_HANDLE bad[] = {0, ULMAX, 0xdeadbeef, 999999, 1UL << 40};
    h = PICK(bad);
    desc_add(" obj=bad:%lu", h);
    return h;
}

static int is_known_object(CK_OBJECT_HANDLE h)
{
    for (CK_ULONG i = 0; i < objects_n; i++)
        if (objects[i] == h)
            return 1;
    return 0;
}

/* An object handle the call must use: a destroyed or never-made one cannot give CKR_OK. */
static CK_OBJECT_HANDLE used_object(void)
{
    CK_OBJECT_HANDLE h = object();
    if (!is_known_object(h))
        fail_if_ok("CKR_OK with an invalid object handle");
    return h;
}

static void forget_session(CK_SESSION_HANDLE h)
{
    for (int i = 0; i < open_n; i++)
        if (open_s[i].h == h) {
            open_s[i] = open_s[--open_n];
            if (closed_n < 64)
                closed_s[closed_n++] = h;
            else
                closed_s[rnd(64)] = h;
            return;
        }
}

static void forget_all(int only_slot, CK_SLOT_ID s)
{
    for (int i = open_n - 1; i >= 0; i--)
        if (!only_slot || open_s[i].slot == s)
            forget_session(open_s[i].h);
}

/* ---- templates and mechanisms ---- */
static const CK_ATTRIBUTE_TYPE TYPES[] = {
    CKA_CLASS, CKA_TOKEN, CKA_PRIVATE, CKA_LABEL, CKA_VALUE, CKA_KEY_TYPE, CKA_ID, CKA_SENSITIVE,
    CKA_SIGN, CKA_DECRYPT, CKA_MODULUS, CKA_PUBLIC_EXPONENT, CKA_PRIVATE_EXPONENT, CKA_EC_PARAMS,
    CKA_EC_POINT, CKA_PUBLIC_KEY_INFO, CKA_CERTIFICATE_TYPE, 0x7fff1234UL, 0x80000001UL, ULMAX,
    0x40000211UL /* CKA_WRAP_TEMPLATE: an array attribute */};

/* An input template (C_FindObjectsInit, C_CreateObject ...). */
static void in_template(CK_ATTRIBUTE_PTR *tp, CK_ULONG *count)
{
    const char *w;
    int r = (int)rnd(12);
    if (r == 0) { *tp = NULL; *count = 0; desc_add(" tmpl=NULL/0"); return; }
    if (r == 1) { *tp = NULL; *count = 1 + rnd(4); desc_add(" tmpl=NULL/%lu", *count); return; }
    if (r == 2) {
        *tp = wild(&w);
        *count = 1 + rnd(4);
        desc_add(" tmpl=%s/%lu", w, *count);
        return;
    }
    CK_ULONG n = rnd(6);
    CK_ATTRIBUTE *t = tail(&tmpl_a, (n ? n : 1) * sizeof(CK_ATTRIBUTE));
    unsigned char *values = val_a.base;
    desc_add(" tmpl[");
    for (CK_ULONG i = 0; i < n; i++) {
        CK_ATTRIBUTE *a = &t[i];
        a->type = chance(15) && i > 0 ? t[i - 1].type : PICK(TYPES); /* repeated types too */
        unsigned char *v = values + i * 1024;
        switch (rnd(10)) {
        case 0:
            a->pValue = NULL;
            a->ulValueLen = 1 + rnd(64);
            desc_add("%lx:NULL/%lu,", a->type, a->ulValueLen);
            break;
        case 1:
            a->pValue = wild(&w);
            a->ulValueLen = 1 + rnd(64);
            desc_add("%lx:%s,", a->type, w);
            break;
        case 2:
            a->pValue = tail(&val_a, 8);
            a->ulValueLen = chance(50) ? ULMAX : HUGE40;
            desc_add("%lx:huge,", a->type);
            break;
        case 3:
            a->pValue = tail(&val_a, 4);
            a->ulValueLen = 4 + 1 + rnd(8000);
            desc_add("%lx:short4/%lu,", a->type, a->ulValueLen);
            break;
        case 4: a->pValue = NULL; a->ulValueLen = 0; desc_add("%lx:NULL/0,", a->type); break;
        case 5:
            a->pValue = v;
            memset(v, (int)rnd(3), 16);
            a->ulValueLen = rnd(17);
            desc_add("%lx:len%lu,", a->type, a->ulValueLen);
            break;
        default: {
            CK_ULONG val;
            if (a->type == CKA_CLASS) val = rnd(5);
            else if (a->type == CKA_KEY_TYPE) val = chance(50) ? CKK_EC : CKK_RSA;
            else val = rnd(2);
            if (a->type == CKA_LABEL || a->type == CKA_ID) {
                memcpy(v, chance(50) ? "acceptance" : "decrypt", 10);
                a->ulValueLen = 7 + rnd(4);
            } else if (a->type == CKA_CLASS || a->type == CKA_KEY_TYPE) {
                memcpy(v, &val, sizeof(val));
                a->ulValueLen = sizeof(CK_ULONG);
            } else {
                v[0] = (unsigned char)val;
                a->ulValueLen = 1;
            }
            a->pValue = v;
            desc_add("%lx:ok,", a->type);
        }
        }
    }
    *tp = t;
    *count = n;
    if (chance(10)) { /* a count beyond the array: the rest is the guard page */
        *count = n + 1 + rnd(100);
        desc_add("]/count=%lu", *count);
    } else if (chance(3)) {
        *count = ULMAX;
        desc_add("]/count=ULMAX");
    } else {
        desc_add("]");
    }
}

/* An output template (C_GetAttributeValue). */
static void out_template(CK_ATTRIBUTE_PTR *tp, CK_ULONG *count)
{
    const char *w;
    int r = (int)rnd(12);
    if (r == 0) { *tp = NULL; *count = 0; desc_add(" tmpl=NULL/0"); return; }
    if (r == 1) { *tp = NULL; *count = 1 + rnd(4); desc_add(" tmpl=NULL/%lu", *count); return; }
    if (r == 2) {
        *tp = wild(&w);
        *count = 1 + rnd(4);
        desc_add(" tmpl=%s/%lu", w, *count);
        return;
    }
    if (r == 3) {
        *tp = (CK_ATTRIBUTE_PTR)ro_page;
        *count = 1 + rnd(4);
        desc_add(" tmpl=ro/%lu", *count);
        return;
    }
    CK_ULONG n = 1 + rnd(6);
    CK_ATTRIBUTE *t = tail(&tmpl_a, n * sizeof(CK_ATTRIBUTE));
    desc_add(" tmpl[");
    for (CK_ULONG i = 0; i < n; i++) {
        CK_ATTRIBUTE *a = &t[i];
        a->type = chance(15) && i > 0 ? t[i - 1].type : PICK(TYPES);
        switch (rnd(9)) {
        case 0: case 1:
            a->pValue = NULL;
            a->ulValueLen = rnd(2) ? 0 : ULMAX;
            desc_add("%lx:NULL,", a->type);
            break;
        case 2: a->pValue = wild(&w); a->ulValueLen = 4096; desc_add("%lx:%s,", a->type, w); break;
        case 3: a->pValue = ro_page; a->ulValueLen = 4096; desc_add("%lx:ro,", a->type); break;
        case 4:
            a->pValue = tail(&out_a, 4);
            a->ulValueLen = 4096;
            desc_add("%lx:short4/4096,", a->type);
            break;
        case 5:
            a->pValue = out_a.base + i * 8192;
            a->ulValueLen = rnd(2) ? ULMAX : HUGE40;
            desc_add("%lx:huge,", a->type);
            break;
        case 6:
            a->pValue = out_a.base + i * 8192;
            a->ulValueLen = rnd(9);
            desc_add("%lx:len%lu,", a->type, a->ulValueLen);
            break;
        default:
            a->pValue = out_a.base + i * 8192;
            a->ulValueLen = 8192;
            desc_add("%lx:ok,", a->type);
        }
    }
    *tp = t;
    *count = n;
    if (chance(8)) {
        *count = n + 1 + rnd(100);
        desc_add("]/count=%lu", *count);
    } else {
        desc_add("]");
    }
}

static CK_MECHANISM_TYPE mech_type(void)
{
    static const CK_MECHANISM_TYPE types[] = {
        CKM_ECDSA, CKM_ECDSA_SHA256, CKM_RSA_PKCS, CKM_RSA_PKCS_PSS, CKM_SHA256_RSA_PKCS,
        CKM_SHA256_RSA_PKCS_PSS, CKM_RSA_PKCS_OAEP, CKM_RSA_X_509, CKM_SHA256, CKM_SHA_1,
        CKM_SHA384, CKM_AES_GCM, CKM_EC_KEY_PAIR_GEN, CKM_RSA_PKCS_KEY_PAIR_GEN, 0x80001234UL,
        ULMAX, 0x7777UL};
    return PICK(types);
}

/* A mechanism: the pointer, the type and its parameter, each maybe wrong. */
static CK_MECHANISM_PTR mechanism(void)
{
    const char *w;
    int r = (int)rnd(14);
    if (r == 0) { desc_add(" mech=NULL"); return NULL; }
    if (r == 1) { void *p = wild(&w); desc_add(" mech=%s", w); return p; }
    if (r == 2) { desc_add(" mech=ro"); return (CK_MECHANISM_PTR)ro_page; }
    if (r == 3) { desc_add(" mech=short8"); return tail(&mech_a, 8); }
    CK_MECHANISM *m = (CK_MECHANISM *)mech_a.base;
    unsigned char *param = mech_a.base + 256;
    m->mechanism = mech_type();
    desc_add(" mech=0x%lx", m->mechanism);
    switch (rnd(10)) {
    case 0: m->pParameter = NULL; m->ulParameterLen = 0; desc_add("/noparam"); break;
    case 1: m->pParameter = NULL; m->ulParameterLen = 24; desc_add("/NULL:24"); break;
    case 2:
        m->pParameter = wild(&w);
        m->ulParameterLen = rnd(2) ? 24 : 40;
        desc_add("/%s", w);
        break;
    case 3:
        m->pParameter = tail(&mech_a, 8);
        m->ulParameterLen = rnd(2) ? 24 : 40;
        desc_add("/short8");
        break;
    case 4: m->pParameter = param; m->ulParameterLen = rnd(2) ? 8 : 200; desc_add("/badlen"); break;
    case 5: m->pParameter = param; m->ulParameterLen = ULMAX; desc_add("/ULMAX"); break;
    case 6: { /* OAEP with a wild or huge source */
        CK_RSA_PKCS_OAEP_PARAMS *o = (CK_RSA_PKCS_OAEP_PARAMS *)param;
        o->hashAlg = chance(50) ? CKM_SHA256 : rnd(2) ? 0 : ULMAX;
        o->mgf = chance(50) ? CKG_MGF1_SHA256 : rnd(4);
        o->source = chance(70) ? CKZ_DATA_SPECIFIED : ULMAX;
        if (chance(50)) { o->pSourceData = wild(&w); o->ulSourceDataLen = 1 + rnd(64); }
        else if (chance(50))
            { o->pSourceData = param + 100; o->ulSourceDataLen = ULMAX; w = "huge"; }
        else { o->pSourceData = NULL; o->ulSourceDataLen = rnd(2) ? 0 : 16; w = "NULL"; }
        m->pParameter = o;
        m->ulParameterLen = sizeof(*o);
        desc_add("/oaep(0x%lx,%lu,src=%s/%lu)", o->hashAlg, o->mgf, w, o->ulSourceDataLen);
        break;
    }
    default: { /* PSS parameters, sometimes sane */
        CK_RSA_PKCS_PSS_PARAMS *p = (CK_RSA_PKCS_PSS_PARAMS *)param;
        p->hashAlg = chance(60) ? CKM_SHA256 : mech_type();
        p->mgf = chance(60) ? CKG_MGF1_SHA256 : rnd(6);
        p->sLen = chance(60) ? 32 : odd_length();
        m->pParameter = p;
        m->ulParameterLen = chance(85) ? sizeof(*p) : sizeof(*p) - 8;
        desc_add("/pss(0x%lx,%lu,%lu)/%lu", p->hashAlg, p->mgf, p->sLen, m->ulParameterLen);
    }
    }
    return m;
}

/* ---- valid sequences ---- */
static CK_RV valid_init(CK_ULONG flags);

/* A violation outside any one call's return code: a valid sequence that stopped working. */
static void broken(const char *what, CK_RV rv)
{
    violations++;
    if (violation_lines_n < 50)
        snprintf(violation_lines[violation_lines_n++], sizeof(violation_lines[0]),
                 "violation: %s rv=0x%lx at call #%lu seed=%lu", what, rv, call_index, seed);
}

/* A call that must succeed: a failure is a violation (the module stopped working). */
static int expect_ok(CK_RV rv, const char *what)
{
    char buf[128];
    if (rv == CKR_OK)
        return 1;
    snprintf(buf, sizeof(buf), "valid call failed (%s)", what);
    broken(buf, rv);
    return 0;
}

static CK_ULONG get_ulong_attr(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_TYPE type)
{
    CK_ULONG v = ULMAX;
    CK_ATTRIBUTE a = {type, &v, sizeof(v)};
    desc_add("valid h=%lu obj=%lu type=0x%lx", h, o, type);
    CALL(C_GetAttributeValue, h, o, &a, 1);
    return v;
}

static CK_BBOOL get_bool_attr(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_TYPE type)
{
    CK_BBOOL v = 0;
    CK_ATTRIBUTE a = {type, &v, 1};
    desc_add("valid h=%lu obj=%lu type=0x%lx", h, o, type);
    CALL(C_GetAttributeValue, h, o, &a, 1);
    return v;
}

static int open_valid(CK_SLOT_ID s, CK_SESSION_HANDLE *h)
{
    desc_add("valid slot=%lu", s);
    return expect_ok(CALL(C_OpenSession, s, CKF_SERIAL_SESSION, NULL, NULL, h), "C_OpenSession");
}

static void close_valid(CK_SESSION_HANDLE h)
{
    desc_add("valid h=%lu", h);
    expect_ok(CALL(C_CloseSession, h), "C_CloseSession");
}

/* After each successful C_Initialize: slots and the key handles, found the valid way. */
static void refresh(void)
{
    CK_SESSION_HANDLE h;
    CK_ULONG n = 0;
    closed_n = 0; /* after a new C_Initialize, old handles may be reused */
    dead_n = 0;
    open_n = 0;
    nslots = 8;
    desc_add("valid");
    if (!expect_ok(CALL(C_GetSlotList, 1, slots, &nslots), "C_GetSlotList") || nslots == 0)
        return;
    ec_key = rsa_key = dec_key = ec_pub = rsa_pub = dec_pub = 0;
    objects_n = 0;
    if (!open_valid(slots[0], &h))
        return;
    desc_add("valid h=%lu", h);
    if (expect_ok(CALL(C_FindObjectsInit, h, NULL, 0), "C_FindObjectsInit")) {
        desc_add("valid h=%lu", h);
        expect_ok(CALL(C_FindObjects, h, objects, 64, &n), "C_FindObjects");
        desc_add("valid h=%lu", h);
        expect_ok(CALL(C_FindObjectsFinal, h), "C_FindObjectsFinal");
    }
    objects_n = n;
    for (CK_ULONG i = 0; i < n; i++) {
        CK_ULONG cls = get_ulong_attr(h, objects[i], CKA_CLASS);
        CK_ULONG kt = get_ulong_attr(h, objects[i], CKA_KEY_TYPE);
        if (cls == CKO_PRIVATE_KEY && kt == CKK_EC)
            ec_key = objects[i];
        else if (cls == CKO_PUBLIC_KEY && kt == CKK_EC)
            ec_pub = objects[i];
        else if (cls == CKO_PRIVATE_KEY && kt == CKK_RSA)
            *(get_bool_attr(h, objects[i], CKA_SIGN) ? &rsa_key : &dec_key) = objects[i];
        else if (cls == CKO_PUBLIC_KEY && kt == CKK_RSA)
            *(get_bool_attr(h, objects[i], CKA_ENCRYPT) ? &dec_pub : &rsa_pub) = objects[i];
    }
    if (ec_pub) {
        CK_ATTRIBUTE a = {CKA_EC_POINT, ec_point, sizeof(ec_point)};
        desc_add("valid h=%lu ec_pub", h);
        if (CALL(C_GetAttributeValue, h, ec_pub, &a, 1) == CKR_OK)
            ec_point_len = a.ulValueLen;
    }
    close_valid(h);
}

static CK_RV valid_init(CK_ULONG flags)
{
    CK_C_INITIALIZE_ARGS args;
    memset(&args, 0, sizeof(args));
    args.flags = flags;
    desc_add("valid flags=0x%lx", flags);
    CK_RV rv = CALL(C_Initialize, &args);
    if (rv == CKR_OK) {
        initialized = 1;
        refresh();
    } else if (rv == CKR_ALREADY_INITIALIZED) {
        initialized = 1;
    }
    return rv;
}


/* Open a session, find the EC key, sign a fixed digest with CKM_ECDSA: must work. */
static int canary(int reinitialize)
{
    CK_SESSION_HANDLE h;
    CK_OBJECT_HANDLE key = 0;
    CK_ULONG n = 0, len = 0;
    CK_ULONG cls = CKO_PRIVATE_KEY, kt = CKK_EC;
    CK_ATTRIBUTE find[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_KEY_TYPE, &kt, sizeof(kt)}};
    CK_MECHANISM m = {CKM_ECDSA, NULL, 0};
    unsigned long before = violations;
    int ok = 1;

    canaries++;
    struct sigaction sa;
    if (sigaction(SIGSEGV, NULL, &sa) == 0 && sa.sa_handler != on_crash)
        broken("the module replaced the host's SIGSEGV handler", 0);
    if (reinitialize && initialized) {
        desc_add("canary NULL");
        ok &= expect_ok(CALL(C_Finalize, NULL), "canary C_Finalize");
        initialized = 0;
        forget_all(0, 0);
    }
    if (!initialized)
        ok &= expect_ok(valid_init(chance(50) ? CKF_OS_LOCKING_OK : 0), "canary C_Initialize");
    if (ok && nslots > 0 && open_valid(slots[0], &h)) {
        desc_add("canary h=%lu", h);
        ok &= expect_ok(CALL(C_FindObjectsInit, h, find, 2), "canary C_FindObjectsInit");
        desc_add("canary h=%lu", h);
        ok &= expect_ok(CALL(C_FindObjects, h, &key, 1, &n), "canary C_FindObjects");
        desc_add("canary h=%lu", h);
        ok &= expect_ok(CALL(C_FindObjectsFinal, h), "canary C_FindObjectsFinal");
        ok &= n == 1;
        desc_add("canary h=%lu ECDSA obj=%lu", h, key);
        ok &= ok && expect_ok(CALL(C_SignInit, h, &m, key), "canary C_SignInit");
        desc_add("canary h=%lu length query", h);
        ok &= ok && expect_ok(CALL(C_Sign, h, (CK_BYTE_PTR)DIGEST, 32, NULL, &len),
                              "canary C_Sign length");
        ok &= len == 64;
        len = sizeof(last_signature);
        desc_add("canary h=%lu", h);
        ok &= ok && expect_ok(CALL(C_Sign, h, (CK_BYTE_PTR)DIGEST, 32, last_signature, &len),
                              "canary C_Sign");
        ok &= len == 64;
        last_signature_len = len;
        close_valid(h);
    } else {
        ok = 0;
    }
    if (!ok) {
        canaries_failed++;
        if (violations == before) /* say why when no call failed: a wrong count or length */
            broken(n != 1 ? "canary found no single EC key" : "canary signature length", 0);
    }
    return ok;
}

/* ---- one fuzzed call per function ---- */
static CK_RV create_mutex(CK_VOID_PTR_PTR m)
{
    *m = malloc(sizeof(pthread_mutex_t));
    pthread_mutex_init(*m, NULL);
    return 0;
}
static CK_RV destroy_mutex(CK_VOID_PTR m) { pthread_mutex_destroy(m); free(m); return 0; }
static CK_RV lock_mutex(CK_VOID_PTR m) { pthread_mutex_lock(m); return 0; }
static CK_RV unlock_mutex(CK_VOID_PTR m) { pthread_mutex_unlock(m); return 0; }
static CK_RV notify(CK_SESSION_HANDLE h, CK_NOTIFICATION e, CK_VOID_PTR app)
{
    (void)h, (void)e, (void)app;
    return 0;
}

static void fuzz_initialize(void)
{
    const char *w;
    CK_C_INITIALIZE_ARGS *args = tail(&mech_a, sizeof(CK_C_INITIALIZE_ARGS));
    void *arg = args;
    if (initialized)
        fail_if_ok("CKR_OK while already initialized");
    memset(args, 0, sizeof(*args));
    args->flags = chance(70) ? rnd(4) : next64();
    if (chance(30)) {
        int k = (int)rnd(5); /* how many of the four mutex callbacks */
        if (k > 0) args->CreateMutex = create_mutex;
        if (k > 1) args->DestroyMutex = destroy_mutex;
        if (k > 2) args->LockMutex = lock_mutex;
        if (k > 3) args->UnlockMutex = unlock_mutex;
        desc_add("mutexes=%d ", k);
    }
    switch (rnd(8)) {
    case 0: args->pReserved = wild(&w); desc_add("reserved=%s ", w); break;
    case 1: args->pReserved = ro_page; desc_add("reserved=ro(empty) "); break;
    case 2: args->pReserved = ro_page + PAGE - 4; desc_add("reserved=ro-end(no NUL) "); break;
    case 3:
        args->pReserved = (char *)"/nonexistent/fuzz.toml";
        desc_add("reserved=missing-file ");
        break;
    default: break;
    }
    switch (rnd(10)) {
    case 0: arg = NULL; desc_add("args=NULL"); break;
    case 1: arg = wild(&w); desc_add("args=%s", w); break;
    case 2: arg = tail(&mech_a, 16); desc_add("args=short16"); break;
    case 3: arg = ro_page; desc_add("args=ro(zeros)"); break;
    default: desc_add("args flags=0x%lx", args->flags);
    }
    CK_RV rv = CALL(C_Initialize, arg);
    if (rv == CKR_OK || rv == CKR_ALREADY_INITIALIZED) {
        int was = initialized;
        initialized = 1;
        if (rv == CKR_OK && !was)
            refresh();
    }
}

static void fuzz_finalize(void)
{
    const char *w;
    void *p = NULL;
    if (!initialized)
        fail_if_ok("CKR_OK while not initialized");
    switch (rnd(4)) {
    case 0: p = wild(&w); desc_add("%s", w); fail_if_ok("CKR_OK with pReserved not NULL"); break;
    case 1: p = ro_page; desc_add("ro"); fail_if_ok("CKR_OK with pReserved not NULL"); break;
    default: desc_add("NULL");
    }
    if (CALL(C_Finalize, p) == CKR_OK) {
        initialized = 0;
        forget_all(0, 0);
    }
}

static void fuzz_interfaces(int f)
{
    const char *w;
    if (f == I_C_GetFunctionList) {
        CK_VOID_PTR *pp = pick_output(tail(&out_a, sizeof(void *)), 5, "pp", OUT_RO);
        CK_RV rv = CALL(C_GetFunctionList, pp);
        if (rv == CKR_OK && pp == tail(&out_a, sizeof(void *)) && *pp != (void *)t240)
            violation("C_GetFunctionList gave another table", rv);
    } else if (f == I_C_GetInterfaceList) {
        CK_INTERFACE *list;
        CK_ULONG *count;
        out_len_value = rnd(6);
        if (rnd(6) == 0) { /* 1/6, like NULL, wild and ro: a NULL list asks for the count */
            list = tail(&out_a, sizeof(CK_INTERFACE));
            desc_add("list=short1");
        } else {
            list = pick_output(tail(&out_a, 4 * sizeof(CK_INTERFACE)), 5, "list",
                               OUT_RO | OUT_OPTIONAL);
        }
        count = pick_output(&out_len_value, 6, " count", OUT_RO | OUT_VALUE);
        CALL(C_GetInterfaceList, list, count);
    } else {
        static const char *names[] = {"PKCS 11", "PKCS 11", "Vendor", "", "PKCS 11 and more"};
        CK_UTF8CHAR_PTR name = (CK_UTF8CHAR_PTR)PICK(names);
        CK_VERSION *v = (CK_VERSION *)(mech_a.base + 64);
        CK_INTERFACE_PTR *pp = tail(&out_a, sizeof(void *));
        CK_FLAGS flags = chance(70) ? 0 : next64();
        v->major = chance(50) ? 3 : (CK_BYTE)rnd(256);
        v->minor = chance(50) ? 0 : (CK_BYTE)rnd(256);
        switch (rnd(7)) {
        case 0: name = NULL; desc_add("name=NULL "); break;
        case 1: name = wild(&w); desc_add("name=%s ", w); break;
        case 2: /* "PKCS 1" with no NUL, right before the guard page */
            name = tail(&mech_a, 6);
            memcpy(name, "PKCS 1", 6);
            desc_add("name=unterminated ");
            break;
        default: desc_add("name=\"%s\" ", (char *)name);
        }
        switch (rnd(5)) {
        case 0: v = NULL; desc_add("version=NULL "); break;
        case 1: v = wild(&w); desc_add("version=%s ", w); break;
        default: desc_add("version=%d.%d ", v->major, v->minor);
        }
        pp = pick_output(pp, 6, "pp", OUT_RO);
        desc_add(" flags=0x%lx", flags);
        CALL(C_GetInterface, name, v, pp, flags);
    }
}

/* A valid XInit first, now and then, so the fuzzed call finds an active operation. */
static CK_SESSION_HANDLE prepared_session(int init)
{
    CK_SESSION_HANDLE h = session();
    if (open_n == 0 || !is_open(h) || !chance(40))
        return h;
    CK_RSA_PKCS_PSS_PARAMS pss = {CKM_SHA256, CKG_MGF1_SHA256, 32};
    CK_RSA_PKCS_OAEP_PARAMS oaep = {CKM_SHA256, CKG_MGF1_SHA256, CKZ_DATA_SPECIFIED, NULL, 0};
    CK_MECHANISM m = {CKM_ECDSA, NULL, 0};
    CK_OBJECT_HANDLE key = ec_key;
    if (init == I_C_SignInit || init == I_C_VerifyInit) {
        switch (rnd(4)) {
        case 0: break;
        case 1: m.mechanism = CKM_RSA_PKCS; key = rsa_key; break;
        case 2:
            m.mechanism = CKM_RSA_PKCS_PSS;
            m.pParameter = &pss;
            m.ulParameterLen = sizeof(pss);
            key = rsa_key;
            break;
        default: m.mechanism = CKM_SHA256_RSA_PKCS; key = rsa_key;
        }
        if (init == I_C_VerifyInit)
            key = key == ec_key ? ec_pub : rsa_pub;
    } else if (init == I_C_DecryptInit || init == I_C_EncryptInit) {
        m.mechanism = CKM_RSA_PKCS_OAEP;
        m.pParameter = &oaep;
        m.ulParameterLen = sizeof(oaep);
        key = init == I_C_DecryptInit ? dec_key : dec_pub;
    } else if (init == I_C_DigestInit) {
        m.mechanism = CKM_SHA256;
    }
    char saved[sizeof(desc)];
    size_t saved_len = desc_len;
    const char *saved_fail = must_fail;
    memcpy(saved, desc, desc_len + 1);
    desc_reset();
    desc_add("setup h=%lu mech=0x%lx key=%lu", h, m.mechanism, key);
    switch (init) {
    case I_C_SignInit: CALL(C_SignInit, h, &m, key); break;
    case I_C_VerifyInit: CALL(C_VerifyInit, h, &m, key); break;
    case I_C_DecryptInit: CALL(C_DecryptInit, h, &m, key); break;
    case I_C_EncryptInit: CALL(C_EncryptInit, h, &m, key); break;
    case I_C_DigestInit: CALL(C_DigestInit, h, &m); break;
    case I_C_FindObjectsInit: CALL(C_FindObjectsInit, h, NULL, 0); break;
    default: desc_reset(); break;
    }
    memcpy(desc, saved, saved_len + 1);
    desc_len = saved_len;
    must_fail = saved_fail;
    return h;
}

/* Which XInit precedes each operation function. */
static int init_of(int f)
{
    switch (f) {
    case I_C_Sign: case I_C_SignUpdate: case I_C_SignFinal: case I_C_SignEncryptUpdate:
    case I_C_SignRecover: case I_C_SignMessage: case I_C_SignMessageBegin: case I_C_SignMessageNext:
        return I_C_SignInit;
    case I_C_Verify: case I_C_VerifyUpdate: case I_C_VerifyFinal: case I_C_VerifyRecover:
    case I_C_DecryptVerifyUpdate:
        return I_C_VerifyInit;
    case I_C_Decrypt: case I_C_DecryptUpdate: case I_C_DecryptFinal: case I_C_DecryptDigestUpdate:
        return I_C_DecryptInit;
    case I_C_Encrypt: case I_C_EncryptUpdate: case I_C_EncryptFinal: case I_C_DigestEncryptUpdate:
        return I_C_EncryptInit;
    case I_C_Digest: case I_C_DigestUpdate: case I_C_DigestFinal: case I_C_DigestKey:
        return I_C_DigestInit;
    case I_C_FindObjects: case I_C_FindObjectsFinal:
        return I_C_FindObjectsInit;
    case I_C_GetOperationState: case I_C_SessionCancel:
        return chance(50) ? I_C_SignInit : I_C_FindObjectsInit;
    default:
        return -1;
    }
}

/* A real digest, DigestInfo, ciphertext or signature for the next in_data(), now and then. */
static void meaningful(int f, int second)
{
    static unsigned char digest_info[51] = {0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48,
                                            0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04,
                                            0x20};
    good_bytes = NULL;
    if (!chance(60))
        return;
    if ((f == I_C_Sign || f == I_C_SignUpdate) && chance(50)) {
        memcpy(digest_info + 19, DIGEST, 32);
        good_bytes = digest_info;
        good_bytes_len = sizeof(digest_info);
    } else if (f == I_C_Sign || f == I_C_SignUpdate || (f == I_C_Verify && !second)) {
        good_bytes = DIGEST;
        good_bytes_len = 32;
    } else if (f == I_C_Verify && last_signature_len) {
        good_bytes = last_signature;
        good_bytes_len = last_signature_len;
    } else if ((f == I_C_Decrypt || f == I_C_DecryptUpdate) && ciphertext_len) {
        good_bytes = ciphertext;
        good_bytes_len = ciphertext_len;
    }
}

static void keep_ciphertext(CK_RV rv, CK_BYTE_PTR out, CK_ULONG_PTR out_len)
{
    if (rv == CKR_OK && (out == tail(&out_a, 8192) || out == tail(&out_a, 512)) &&
        out_len == &out_len_value && out_len_value > 0 && out_len_value <= sizeof(ciphertext)) {
        memcpy(ciphertext, out, out_len_value);
        ciphertext_len = out_len_value;
    }
}

static CK_ULONG good_length(int f)
{
    switch (f) {
    case I_C_Sign: case I_C_SignUpdate: return PICK(((CK_ULONG[]){32, 51, 48, 64, 20}));
    case I_C_Decrypt: case I_C_DecryptUpdate: case I_C_Verify: return 384;
    default: return 32;
    }
}

static void fuzz_call(int f)
{
    CK_SESSION_HANDLE h;
    CK_BYTE_PTR in, in2, out;
    CK_ULONG in_len, in2_len, count;
    CK_ULONG_PTR out_len;
    CK_ATTRIBUTE_PTR tmpl, tmpl2;
    CK_OBJECT_HANDLE obj;
    const char *w;
    void *param;
    CK_ULONG param_len;
    CK_RV rv;

    switch (f) {
    case I_C_Initialize: fuzz_initialize(); return;
    case I_C_Finalize: fuzz_finalize(); return;
    case I_C_GetFunctionList: case I_C_GetInterfaceList: case I_C_GetInterface:
        fuzz_interfaces(f);
        return;
    default: break;
    }
    if (!initialized)
        fail_if_ok("CKR_OK while not initialized");

    switch (f) {
    case I_C_GetInfo: {
        void *info = out_struct(sizeof(CK_INFO)); /* described before CALL begins the line */
        CALL(C_GetInfo, info);
        break;
    }
    case I_C_GetSlotList: {
        CK_BBOOL present = (CK_BBOOL)(chance(80) ? rnd(2) : rnd(256));
        desc_add("present=%d ", present);
        out_data(&out, &out_len); /* a CK_SLOT_ID array: the byte buffers serve */
        CALL(C_GetSlotList, present, (CK_SLOT_ID_PTR)out, out_len);
        break;
    }
    case I_C_GetSlotInfo: {
        CK_SLOT_ID s = slot();
        desc_add(" ");
        void *info = out_struct(sizeof(CK_SLOT_INFO));
        CALL(C_GetSlotInfo, s, info);
        break;
    }
    case I_C_GetTokenInfo: {
        CK_SLOT_ID s = slot();
        desc_add(" ");
        void *info = out_struct(sizeof(CK_TOKEN_INFO));
        CALL(C_GetTokenInfo, s, info);
        break;
    }
    case I_C_GetMechanismList: {
        CK_SLOT_ID s = slot();
        desc_add(" ");
        out_data(&out, &out_len);
        CALL(C_GetMechanismList, s, (CK_MECHANISM_TYPE_PTR)out, out_len);
        break;
    }
    case I_C_GetMechanismInfo: {
        CK_SLOT_ID s = slot();
        CK_MECHANISM_TYPE t = mech_type();
        desc_add(" type=0x%lx ", t);
        void *info = out_struct(sizeof(CK_MECHANISM_INFO));
        CALL(C_GetMechanismInfo, s, t, info);
        break;
    }
    case I_C_InitToken: {
        CK_SLOT_ID s = slot();
        CK_UTF8CHAR_PTR label = chance(50) ? (CK_UTF8CHAR_PTR)tail(&in_a, 32) : wild(&w);
        desc_add(" ");
        in_data(&in, &in_len, 4);
        CALL(C_InitToken, s, in, in_len, label);
        break;
    }
    case I_C_InitPIN:
        h = session();
        desc_add(" ");
        in_data(&in, &in_len, 4);
        CALL(C_InitPIN, h, in, in_len);
        break;
    case I_C_SetPIN:
        h = session();
        desc_add(" ");
        in_data(&in, &in_len, 4);
        desc_add(" ");
        in_data(&in2, &in2_len, 4);
        CALL(C_SetPIN, h, in, in_len, in2, in2_len);
        break;
    case I_C_OpenSession: {
        CK_SLOT_ID s = slot();
        CK_FLAGS flags = chance(70) ? CKF_SERIAL_SESSION | (rnd(2) ? CKF_RW_SESSION : 0)
                                    : next64() & 0xff;
        CK_SESSION_HANDLE *ph = tail(&out_a, sizeof(CK_SESSION_HANDLE));
        void *app = chance(50) ? NULL : wild(&w); /* opaque to the module: only passed back */
        CK_NOTIFY cb = chance(50) ? NULL : notify;
        desc_add(" flags=0x%lx", flags);
        ph = pick_output(ph, 8, " ph", OUT_RO);
        if (!(flags & CKF_SERIAL_SESSION))
            fail_if_ok("CKR_OK without CKF_SERIAL_SESSION");
        CK_RV rv = CALL(C_OpenSession, s, flags, app, cb, ph);
        if (rv == CKR_OK && ph == tail(&out_a, sizeof(CK_SESSION_HANDLE))) {
            if (open_n == POOL) {
                CK_SESSION_HANDLE old = open_s[0].h;
                desc_add("valid h=%lu (pool full)", old);
                if (expect_ok(CALL(C_CloseSession, old), "C_CloseSession"))
                    forget_session(old);
            }
            if (open_n < POOL) {
                open_s[open_n].h = *ph;
                open_s[open_n++].slot = s;
            }
        }
        break;
    }
    case I_C_CloseSession:
        h = session();
        if (CALL(C_CloseSession, h) == CKR_OK)
            forget_session(h);
        break;
    case I_C_CloseAllSessions: {
        CK_SLOT_ID s = slot();
        if (CALL(C_CloseAllSessions, s) == CKR_OK)
            forget_all(1, s);
        break;
    }
    case I_C_GetSessionInfo:
        h = session();
        desc_add(" ");
        void *info = out_struct(sizeof(CK_SESSION_INFO));
        CALL(C_GetSessionInfo, h, info);
        break;
    case I_C_GetOperationState:
        h = prepared_session(init_of(f));
        desc_add(" ");
        out_data(&out, &out_len);
        CALL(C_GetOperationState, h, out, out_len);
        break;
    case I_C_SetOperationState:
        h = session();
        desc_add(" ");
        in_data(&in, &in_len, 64);
        CALL(C_SetOperationState, h, in, in_len, object(), object());
        break;
    case I_C_Login: case I_C_LoginUser: {
        CK_USER_TYPE user = chance(80) ? rnd(4) : next64();
        h = session();
        desc_add(" user=%lu ", user);
        in_data(&in, &in_len, 4);
        if (f == I_C_Login) {
            CALL(C_Login, h, user, in, in_len);
        } else {
            desc_add(" ");
            in_data(&in2, &in2_len, 4);
            CALL(C_LoginUser, h, user, in, in_len, in2, in2_len);
        }
        break;
    }
    case I_C_Logout: h = session(); CALL(C_Logout, h); break;
    case I_C_CreateObject: case I_C_CopyObject: {
        CK_OBJECT_HANDLE *ph = tail(&out_a, sizeof(CK_OBJECT_HANDLE));
        h = session();
        obj = f == I_C_CopyObject ? used_object() : 0;
        in_template(&tmpl, &count);
        ph = pick_output(ph, 6, " ph", 0);
        CK_RV rv = f == I_C_CopyObject ? CALL(C_CopyObject, h, obj, tmpl, count, ph)
                                       : CALL(C_CreateObject, h, tmpl, count, ph);
        if (rv == CKR_OK && ph == tail(&out_a, sizeof(CK_OBJECT_HANDLE)) && chance(50)) {
            CK_OBJECT_HANDLE made = *ph; /* destroy it: a handle that no longer exists */
            desc_add("valid h=%lu obj=%lu", h, made);
            if (expect_ok(CALL(C_DestroyObject, h, made), "C_DestroyObject") && dead_n < 32)
                dead_objects[dead_n++] = made;
        }
        break;
    }
    case I_C_DestroyObject:
        h = session();
        obj = used_object();
        CALL(C_DestroyObject, h, obj);
        break;
    case I_C_GetObjectSize: {
        h = session();
        obj = used_object();
        CK_ULONG *p = pick_output(&out_len_value, 5, " size", OUT_RO);
        CALL(C_GetObjectSize, h, obj, p);
        break;
    }
    case I_C_GetAttributeValue:
        h = session();
        obj = used_object();
        out_template(&tmpl, &count);
        CALL(C_GetAttributeValue, h, obj, tmpl, count);
        break;
    case I_C_SetAttributeValue:
        h = session();
        obj = used_object();
        in_template(&tmpl, &count);
        CALL(C_SetAttributeValue, h, obj, tmpl, count);
        break;
    case I_C_FindObjectsInit:
        h = session();
        in_template(&tmpl, &count);
        CALL(C_FindObjectsInit, h, tmpl, count);
        break;
    case I_C_FindObjects: {
        CK_OBJECT_HANDLE *room = tail(&out_a, 64 * sizeof(CK_OBJECT_HANDLE)), *found;
        CK_ULONG max = chance(70) ? rnd(65) : odd_length();
        h = prepared_session(init_of(f));
        if (rnd(8) == 0) { /* 1/8, like NULL, wild and ro: with max 0 none of them is wrong */
            found = tail(&out_a, 8);
            desc_add(" found=short1");
        } else {
            found = pick_output(room, 7, " found", OUT_RO | OUT_OPTIONAL);
            if (found == room && max > 64) /* room for 64 handles */
                max = 64;
        }
        desc_add(" max=%lu", max);
        CK_ULONG *n = pick_output(&out_len_value, 8, " n", 0);
        CALL(C_FindObjects, h, found, max, n);
        break;
    }
    case I_C_FindObjectsFinal: h = prepared_session(init_of(f)); CALL(C_FindObjectsFinal, h); break;

    case I_C_EncryptInit: h = session(); CALL(C_EncryptInit, h, mechanism(), object()); break;
    case I_C_DecryptInit: h = session(); CALL(C_DecryptInit, h, mechanism(), object()); break;
    case I_C_SignInit: h = session(); CALL(C_SignInit, h, mechanism(), object()); break;
    case I_C_VerifyInit: h = session(); CALL(C_VerifyInit, h, mechanism(), object()); break;
    case I_C_SignRecoverInit:
        h = session();
        CALL(C_SignRecoverInit, h, mechanism(), object());
        break;
    case I_C_VerifyRecoverInit:
        h = session();
        CALL(C_VerifyRecoverInit, h, mechanism(), object());
        break;
    case I_C_DigestInit: h = session(); CALL(C_DigestInit, h, mechanism()); break;
    case I_C_MessageEncryptInit:
        h = session();
        CALL(C_MessageEncryptInit, h, mechanism(), object());
        break;
    case I_C_MessageDecryptInit:
        h = session();
        CALL(C_MessageDecryptInit, h, mechanism(), object());
        break;
    case I_C_MessageSignInit:
        h = session();
        CALL(C_MessageSignInit, h, mechanism(), object());
        break;
    case I_C_MessageVerifyInit:
        h = session();
        CALL(C_MessageVerifyInit, h, mechanism(), object());
        break;
    case I_C_DigestKey:
        h = prepared_session(init_of(f));
        obj = used_object();
        CALL(C_DigestKey, h, obj);
        break;

#define SINGLE(name)                                            \
    case I_##name:                                              \
        h = prepared_session(init_of(f));                       \
        desc_add(" ");                                          \
        meaningful(f, 0);                                       \
        in_data(&in, &in_len, good_length(f));                  \
        desc_add(" ");                                          \
        out_data(&out, &out_len);                               \
        rv = CALL(name, h, in, in_len, out, out_len);           \
        if (f == I_C_Encrypt)                                   \
            keep_ciphertext(rv, out, out_len);                  \
        break;
    SINGLE(C_Encrypt) SINGLE(C_EncryptUpdate) SINGLE(C_Decrypt) SINGLE(C_DecryptUpdate)
    SINGLE(C_Digest) SINGLE(C_Sign) SINGLE(C_SignRecover) SINGLE(C_VerifyRecover)
    SINGLE(C_DigestEncryptUpdate) SINGLE(C_DecryptDigestUpdate) SINGLE(C_SignEncryptUpdate)
    SINGLE(C_DecryptVerifyUpdate)
#define UPDATE(name)                                            \
    case I_##name:                                              \
        h = prepared_session(init_of(f));                       \
        desc_add(" ");                                          \
        meaningful(f, 0);                                       \
        in_data(&in, &in_len, good_length(f));                  \
        CALL(name, h, in, in_len);                              \
        break;
    UPDATE(C_DigestUpdate) UPDATE(C_SignUpdate) UPDATE(C_VerifyUpdate) UPDATE(C_VerifyFinal)
    UPDATE(C_SeedRandom)
#define FINAL(name)                                             \
    case I_##name:                                              \
        h = prepared_session(init_of(f));                       \
        desc_add(" ");                                          \
        out_data(&out, &out_len);                               \
        CALL(name, h, out, out_len);                            \
        break;
    FINAL(C_EncryptFinal) FINAL(C_DecryptFinal) FINAL(C_DigestFinal) FINAL(C_SignFinal)
    case I_C_Verify:
        h = prepared_session(init_of(f));
        desc_add(" ");
        meaningful(f, 0);
        in_data(&in, &in_len, 32);
        desc_add(" sig:");
        meaningful(f, 1);
        in_data(&in2, &in2_len, 64);
        CALL(C_Verify, h, in, in_len, in2, in2_len);
        break;
    case I_C_GenerateRandom: {
        CK_ULONG n = chance(60) ? rnd(1100) : odd_length();
        h = session();
        if (rnd(8) == 0) { /* 1/8, like NULL, wild and ro below */
            out = tail(&out_a, 16);
            desc_add(" out=short16");
            if (n > 16)
                fail_if_ok("CKR_OK past a guard page");
        } else { /* with n == 0 nothing is written: a bad pointer may give CKR_OK */
            out = pick_output(tail(&out_a, 8192), 7, " out", OUT_RO | (n ? 0 : OUT_OPTIONAL));
            if (out == tail(&out_a, 8192) && n > 8192)
                fail_if_ok("CKR_OK past a guard page");
        }
        desc_add(" len=%lu", n);
        CALL(C_GenerateRandom, h, out, n);
        break;
    }
    case I_C_GetFunctionStatus: h = session(); CALL(C_GetFunctionStatus, h); break;
    case I_C_CancelFunction: h = session(); CALL(C_CancelFunction, h); break;
    case I_C_SessionCancel: {
        CK_FLAGS flags = chance(50) ? 1UL << rnd(20) : next64();
        h = prepared_session(init_of(f));
        desc_add(" flags=0x%lx", flags);
        CALL(C_SessionCancel, h, flags);
        break;
    }
    case I_C_WaitForSlotEvent: {
        /* CKF_DONT_BLOCK always: a blocking wait with no event may rightly never return. */
        CK_FLAGS flags = CKF_DONT_BLOCK | (chance(50) ? 0 : next64());
        CK_SLOT_ID *ps = pick_output(tail(&out_a, sizeof(CK_SLOT_ID)), 5, "slot", 0);
        void *reserved = NULL;
        if (chance(30)) {
            reserved = wild(&w);
            desc_add(" reserved=%s", w);
            fail_if_ok("CKR_OK with pReserved not NULL");
        }
        desc_add(" flags=0x%lx", flags);
        CALL(C_WaitForSlotEvent, flags, ps, reserved);
        break;
    }
    case I_C_GenerateKey: {
        CK_OBJECT_HANDLE *ph = chance(70) ? tail(&out_a, 8) : wild(&w);
        h = session();
        CK_MECHANISM_PTR m = mechanism();
        in_template(&tmpl, &count);
        CALL(C_GenerateKey, h, m, tmpl, count, ph);
        break;
    }
    case I_C_GenerateKeyPair: {
        CK_OBJECT_HANDLE *ph1 = chance(70) ? tail(&out_a, 8) : wild(&w);
        CK_OBJECT_HANDLE *ph2 = chance(70) ? tail(&out_a, 16) : NULL;
        CK_ULONG count2;
        h = session();
        CK_MECHANISM_PTR m = mechanism();
        in_template(&tmpl, &count);
        in_template(&tmpl2, &count2);
        CALL(C_GenerateKeyPair, h, m, tmpl, count, tmpl2, count2, ph1, ph2);
        break;
    }
    case I_C_WrapKey: {
        h = session();
        CK_MECHANISM_PTR m = mechanism();
        CK_OBJECT_HANDLE k1 = object(), k2 = object();
        desc_add(" ");
        out_data(&out, &out_len);
        CALL(C_WrapKey, h, m, k1, k2, out, out_len);
        break;
    }
    case I_C_UnwrapKey: {
        CK_OBJECT_HANDLE *ph = chance(70) ? tail(&out_a, 8) : wild(&w);
        h = session();
        CK_MECHANISM_PTR m = mechanism();
        obj = object();
        desc_add(" ");
        in_data(&in, &in_len, 256);
        in_template(&tmpl, &count);
        CALL(C_UnwrapKey, h, m, obj, in, in_len, tmpl, count, ph);
        break;
    }
    case I_C_DeriveKey: {
        CK_OBJECT_HANDLE *ph = chance(70) ? tail(&out_a, 8) : wild(&w);
        h = session();
        CK_MECHANISM_PTR m = mechanism();
        obj = object();
        in_template(&tmpl, &count);
        CALL(C_DeriveKey, h, m, obj, tmpl, count, ph);
        break;
    }

    /* The message API (v3.0): a parameter block, data in, data out. */
    case I_C_EncryptMessage: case I_C_DecryptMessage: case I_C_SignMessage: case I_C_VerifyMessage:
    case I_C_EncryptMessageBegin: case I_C_DecryptMessageBegin: case I_C_SignMessageBegin:
    case I_C_VerifyMessageBegin: case I_C_EncryptMessageNext: case I_C_DecryptMessageNext:
    case I_C_SignMessageNext: case I_C_VerifyMessageNext: {
        CK_FLAGS flags = chance(50) ? 0 : next64();
        h = prepared_session(init_of(f));
        desc_add(" param:");
        in_data((CK_BYTE_PTR *)&param, &param_len, 16);
        desc_add(" ");
        in_data(&in, &in_len, 32);
        desc_add(" ");
        in_data(&in2, &in2_len, 64);
        desc_add(" ");
        out_data(&out, &out_len);
        desc_add(" flags=0x%lx", flags);
        switch (f) {
        case I_C_EncryptMessage:
            CALL(C_EncryptMessage, h, param, param_len, in, in_len, in2, in2_len, out, out_len);
            break;
        case I_C_DecryptMessage:
            CALL(C_DecryptMessage, h, param, param_len, in, in_len, in2, in2_len, out, out_len);
            break;
        case I_C_SignMessage:
            CALL(C_SignMessage, h, param, param_len, in, in_len, out, out_len);
            break;
        case I_C_VerifyMessage:
            CALL(C_VerifyMessage, h, param, param_len, in, in_len, in2, in2_len);
            break;
        case I_C_EncryptMessageBegin:
            CALL(C_EncryptMessageBegin, h, param, param_len, in, in_len);
            break;
        case I_C_DecryptMessageBegin:
            CALL(C_DecryptMessageBegin, h, param, param_len, in, in_len);
            break;
        case I_C_SignMessageBegin: CALL(C_SignMessageBegin, h, param, param_len); break;
        case I_C_VerifyMessageBegin: CALL(C_VerifyMessageBegin, h, param, param_len); break;
        case I_C_EncryptMessageNext:
            CALL(C_EncryptMessageNext, h, param, param_len, in, in_len, out, out_len, flags);
            break;
        case I_C_DecryptMessageNext:
            CALL(C_DecryptMessageNext, h, param, param_len, in, in_len, out, out_len, flags);
            break;
        case I_C_SignMessageNext:
            CALL(C_SignMessageNext, h, param, param_len, in, in_len, out, out_len);
            break;
        default: CALL(C_VerifyMessageNext, h, param, param_len, in, in_len, in2, in2_len); break;
        }
        break;
    }
    case I_C_MessageEncryptFinal: h = session(); CALL(C_MessageEncryptFinal, h); break;
    case I_C_MessageDecryptFinal: h = session(); CALL(C_MessageDecryptFinal, h); break;
    case I_C_MessageSignFinal: h = session(); CALL(C_MessageSignFinal, h); break;
    case I_C_MessageVerifyFinal: h = session(); CALL(C_MessageVerifyFinal, h); break;
    default:
        fprintf(stderr, "fuzz: no generator for %s\n", NAMES[f]);
        exit(2);
    }
}

/* Which function to call next: all of them, C_Finalize rarely, C_Initialize when needed. */
static int pick_function(void)
{
    if (!initialized && chance(50))
        return I_C_Initialize;
    for (;;) {
        int f = (int)rnd(NFUNC);
        if (f == I_C_Finalize && !chance(10))
            continue;
        if (f == I_C_Initialize && initialized && !chance(30))
            continue;
        if (f == I_C_CloseAllSessions && !chance(20))
            continue;
        if (not_supported_streak[f] >= 20 && !chance(25)) /* still called, less often */
            continue;
        return f;
    }
}

/* ---- start-up ---- */
static void load_allowed(const char *path)
{
    char line[2048];
    FILE *in = fopen(path, "r");
    if (in == NULL) {
        perror(path);
        exit(2);
    }
    while (fgets(line, sizeof(line), in) != NULL) {
        char *save = NULL, *name = strtok_r(line, " \t\n", &save), *tok;
        int f = -1;
        if (name == NULL)
            continue;
        for (int i = 0; i < NFUNC; i++)
            if (strcmp(NAMES[i], name) == 0)
                f = i;
        if (f < 0)
            continue;
        allowed_n[f] = 0;
        while ((tok = strtok_r(NULL, " \t\n", &save)) != NULL && allowed_n[f] < 96)
            allowed[f][allowed_n[f]++] = strtoul(tok, NULL, 0);
    }
    fclose(in);
    for (int i = 0; i < NFUNC; i++)
        if (allowed_n[i] == 0) {
            fprintf(stderr, "fuzz: %s has no allowed return codes in %s\n", NAMES[i], path);
            exit(2);
        }
}

static void load_module(const char *path)
{
    CK_INTERFACE_PTR iface = NULL;
    CK_VERSION v30 = {3, 0};
    void *fl = NULL;
    lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (lib == NULL) {
        fprintf(stderr, "fuzz: dlopen: %s\n", dlerror());
        exit(2);
    }
    __typeof__(&C_GetInterface) get_interface =
        (__typeof__(&C_GetInterface))dlsym(lib, "C_GetInterface");
    __typeof__(&C_GetFunctionList) get_list =
        (__typeof__(&C_GetFunctionList))dlsym(lib, "C_GetFunctionList");
    if (get_interface == NULL || get_list == NULL ||
        get_interface((CK_UTF8CHAR_PTR) "PKCS 11", &v30, &iface, 0) != CKR_OK ||
        get_list(&fl) != CKR_OK) {
        fprintf(stderr, "fuzz: C_GetInterface(\"PKCS 11\", 3.0) or C_GetFunctionList failed\n");
        exit(2);
    }
    t30 = iface->pFunctionList;
    t240 = fl;
    if (t30->version.major != 3 || t240->version.major != 2 || t240->version.minor != 40) {
        fprintf(stderr, "fuzz: unexpected table versions\n");
        exit(2);
    }
    for (int i = 0; i < NFUNC; i++) /* the tables are in the order of FUNCTIONS above */
        if (t30->fn[i] != dlsym(lib, NAMES[i]) || (i < N240 && t240->fn[i] != t30->fn[i])) {
            fprintf(stderr, "fuzz: table entry %d is not %s\n", i, NAMES[i]);
            exit(2);
        }
}

static void summary(double seconds)
{
    struct rusage ru;
    unsigned long fuzzed = 0;
    getrusage(RUSAGE_SELF, &ru);
    for (int i = 0; i < NFUNC; i++)
        fuzzed += counts[i];
    printf("fuzz seed=%lu calls=%lu seconds=%.1f crashes=0 hangs=0 violations=%lu canaries=%lu "
           "canaries_failed=%lu max_rss_kb=%ld\n",
           seed, fuzzed, seconds, violations, canaries, canaries_failed, ru.ru_maxrss);
    printf("functions");
    for (int i = 0; i < NFUNC; i++)
        printf(" %s=%lu", NAMES[i], counts[i]);
    printf("\nrv");
    for (int i = 0; i < histogram_n; i++)
        printf(" 0x%lx=%lu", histogram[i].rv, histogram[i].n);
    printf("\n");
    for (int i = 0; i < violation_lines_n; i++)
        printf("%s\n", violation_lines[i]);
    if (last_signature_len) {
        printf("ec_point ");
        for (CK_ULONG i = 0; i < ec_point_len; i++)
            printf("%02x", ec_point[i]);
        printf("\nsignature ");
        for (CK_ULONG i = 0; i < last_signature_len; i++)
            printf("%02x", last_signature[i]);
        printf("\ndigest ");
        for (int i = 0; i < 32; i++)
            printf("%02x", DIGEST[i]);
        printf("\n");
    }
}

int main(int argc, char **argv)
{
    pthread_t dog;
    unsigned long total, next_canary;
    const int canary_every = 200;
    long long t0;

    if (argc < 5) {
        fprintf(stderr, "usage: fuzz MODULE ALLOWED SEED CALLS [-v]\n");
        return 2;
    }
    seed = strtoul(argv[3], NULL, 0);
    total = strtoul(argv[4], NULL, 0);
    verbose = argc > 5 && strcmp(argv[5], "-v") == 0;
    if (getenv("FUZZ_HANG_SECONDS") != NULL)
        hang_seconds = strtol(getenv("FUZZ_HANG_SECONDS"), NULL, 10);
    rng_state = seed;
    desc_reset();
    install_handlers();
    setup_memory();
    load_allowed(argv[2]);
    load_module(argv[1]);
    pthread_create(&dog, NULL, watchdog, NULL);
    t0 = now_ms();

    if (!expect_ok(valid_init(CKF_OS_LOCKING_OK), "first C_Initialize") || ec_key == 0) {
        fprintf(stderr, "fuzz: the module does not start or has no EC key\n");
        summary((double)(now_ms() - t0) / 1000);
        return 1;
    }
    canary(0);
    next_canary = call_index + canary_every;
    while (call_index < total) {
        fuzz_call(pick_function());
        if (call_index >= next_canary) { /* every 10th canary starts with C_Finalize */
            canary(canaries % 10 == 9);
            next_canary = call_index + canary_every;
        }
    }
    canary(0); /* the next valid call works */
    summary((double)(now_ms() - t0) / 1000);
    return violations == 0 && canaries_failed == 0 ? 0 : 1;
}
