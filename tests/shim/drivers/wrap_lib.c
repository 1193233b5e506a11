/* A library that wraps a C library function with dlsym(RTLD_NEXT), as interposers and
 * profilers do. Linked into a program run with the shim preloaded, it comes after the shim
 * in the lookup order, so its dlsym(RTLD_NEXT, ...) reaches the shim's dlsym hook first:
 * that hook must keep RTLD_NEXT relative to this library (the caller), or the lookup finds
 * this very getpid and the wrapper calls itself forever.
 *
 * A recursion guard turns that failure into a flag the program reports instead of a
 * stack overflow. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <sys/syscall.h>
#include <unistd.h>

typedef pid_t (*getpid_fn)(void);

unsigned long wrap_getpid_calls;
int wrap_recursed;
void *wrap_next_getpid; /* what dlsym(RTLD_NEXT, "getpid") gave this library */

static __thread int depth;

pid_t getpid(void) {
    wrap_getpid_calls++;
    if (depth > 0) {
        wrap_recursed = 1;
        return (pid_t)syscall(SYS_getpid);
    }
    depth++;
    getpid_fn next = (getpid_fn)dlsym(RTLD_NEXT, "getpid");
    wrap_next_getpid = (void *)next;
    pid_t pid = next ? next() : -1;
    depth--;
    return pid;
}
