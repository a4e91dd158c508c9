/* A small PKCS#11 host for tests/test_security_privileged.py, meant to be installed setuid:
   prints whether the kernel marked the process privileged (AT_SECURE), then C_Initialize(NULL)
   (so the config comes from the environment or the files), every token's label, and how many
   objects the first token has (which reads the keys from KMS). One line each. */
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>
#include <sys/auxv.h>

typedef unsigned long CK_ULONG;
typedef CK_ULONG CK_RV;
typedef struct { unsigned char major, minor; } VERSION;
typedef struct {
    unsigned char label[32], manufacturer[32], model[16], serial[16];
    CK_ULONG flags, max_sessions, sessions, max_rw, rw, max_pin, min_pin, total_pub, free_pub,
        total_priv, free_priv;
    VERSION hw, fw;
    unsigned char utc_time[16];
} TOKEN_INFO;

#define CKF_SERIAL_SESSION 4UL

int main(int argc, char **argv)
{
    void *h = argc > 1 ? dlopen(argv[1], RTLD_NOW | RTLD_LOCAL) : NULL;
    CK_RV (*init)(void *), (*fin)(void *), (*slots)(unsigned char, CK_ULONG *, CK_ULONG *);
    CK_RV (*token)(CK_ULONG, TOKEN_INFO *);
    CK_RV (*open)(CK_ULONG, CK_ULONG, void *, void *, CK_ULONG *);
    CK_RV (*find_init)(CK_ULONG, void *, CK_ULONG), (*find_final)(CK_ULONG);
    CK_RV (*find)(CK_ULONG, CK_ULONG *, CK_ULONG, CK_ULONG *);
    CK_ULONG list[16], count = 16, session = 0, objects[64], found = 0, i;
    CK_RV rv;
    TOKEN_INFO info;

    printf("secure %lu\n", getauxval(AT_SECURE));
    if (h == NULL) {
        printf("dlopen %s\n", dlerror());
        return 2;
    }
    init = (CK_RV (*)(void *))dlsym(h, "C_Initialize");
    fin = (CK_RV (*)(void *))dlsym(h, "C_Finalize");
    slots = (CK_RV (*)(unsigned char, CK_ULONG *, CK_ULONG *))dlsym(h, "C_GetSlotList");
    token = (CK_RV (*)(CK_ULONG, TOKEN_INFO *))dlsym(h, "C_GetTokenInfo");
    open = (CK_RV (*)(CK_ULONG, CK_ULONG, void *, void *, CK_ULONG *))dlsym(h, "C_OpenSession");
    find_init = (CK_RV (*)(CK_ULONG, void *, CK_ULONG))dlsym(h, "C_FindObjectsInit");
    find = (CK_RV (*)(CK_ULONG, CK_ULONG *, CK_ULONG, CK_ULONG *))dlsym(h, "C_FindObjects");
    find_final = (CK_RV (*)(CK_ULONG))dlsym(h, "C_FindObjectsFinal");

    rv = init(NULL);
    printf("C_Initialize %#lx\n", rv);
    if (rv != 0)
        return 0;
    rv = slots(1, list, &count);
    printf("C_GetSlotList %#lx %lu\n", rv, rv == 0 ? count : 0);
    for (i = 0; rv == 0 && i < count; i++) {
        memset(&info, 0, sizeof info);
        if (token(list[i], &info) == 0)
            printf("token %.32s\n", (char *)info.label);
    }
    if (rv == 0 && count > 0 && open(list[0], CKF_SERIAL_SESSION, NULL, NULL, &session) == 0) {
        rv = find_init(session, NULL, 0);
        if (rv == 0) {
            rv = find(session, objects, 64, &found);
            find_final(session);
        }
        printf("objects %#lx %lu\n", rv, rv == 0 ? found : 0);
    }
    printf("C_Finalize %#lx\n", fin(NULL));
    return 0;
}
