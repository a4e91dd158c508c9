/* Calls google/pkcs11test makes before and with C_Initialize: a wild pReserved (1), and an
   operation with a garbage mechanism pointer before C_Initialize. Prints each CK_RV. */
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

typedef unsigned long CK_ULONG;
typedef CK_ULONG CK_RV;
typedef struct { void *create, *destroy, *lock, *unlock; CK_ULONG flags; void *pReserved; } ARGS;

int main(int argc, char **argv)
{
    void *h = argc > 1 ? dlopen(argv[1], RTLD_NOW | RTLD_LOCAL) : NULL;
    CK_RV (*init)(void *), (*fin)(void *), (*encrypt_init)(CK_ULONG, void *, CK_ULONG);
    ARGS args;
    if (h == NULL)
        return 2;
    init = (CK_RV (*)(void *))dlsym(h, "C_Initialize");
    fin = (CK_RV (*)(void *))dlsym(h, "C_Finalize");
    encrypt_init = (CK_RV (*)(CK_ULONG, void *, CK_ULONG))dlsym(h, "C_EncryptInit");
    printf("C_EncryptInit(garbage) %#lx\n", encrypt_init(1, (void *)0x10, 1));
    memset(&args, 0, sizeof args);
    args.pReserved = (void *)1;
    printf("C_Initialize(pReserved=1) %#lx\n", init(&args));
    args.pReserved = NULL;
    printf("C_Initialize %#lx\n", init(&args));
    printf("C_Finalize %#lx\n", fin(NULL));
    return 0;
}
