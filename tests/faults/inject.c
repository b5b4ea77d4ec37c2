/* Fault injection at the libc boundary, for the fault tests (tests/integration/test_faults.py).
 *
 * Loaded with LD_PRELOAD into a server process. While the file named by
 * FAULT_ARMED exists, a write (write, pwrite, pwrite64) to a file whose path
 * contains FAULT_PATH fails with ENOSPC, or an fsync/fdatasync of such a
 * file fails with EIO, as FAULT_OP ("write" or "fsync") says. Everything
 * else goes straight to libc. The server sees the same errno a full disk or a failing
 * device gives it; nothing of imgshare is replaced.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*real_pwrite64)(int, const void *, size_t, off64_t);
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);

__attribute__((constructor)) static void init(void) {
    real_write = dlsym(RTLD_NEXT, "write");
    real_pwrite = dlsym(RTLD_NEXT, "pwrite");
    real_pwrite64 = dlsym(RTLD_NEXT, "pwrite64");
    real_fsync = dlsym(RTLD_NEXT, "fsync");
    real_fdatasync = dlsym(RTLD_NEXT, "fdatasync");
}

static int armed_for(int fd, const char *op) {
    const char *armed = getenv("FAULT_ARMED");
    const char *path = getenv("FAULT_PATH");
    const char *wanted = getenv("FAULT_OP");
    if (!armed || !path || !wanted || strcmp(op, wanted) != 0 || access(armed, F_OK) != 0)
        return 0;
    char link[64], target[PATH_MAX];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, target, sizeof target - 1);
    if (n < 0)
        return 0;
    target[n] = '\0';
    return strstr(target, path) != NULL;
}

ssize_t write(int fd, const void *buf, size_t count) {
    if (armed_for(fd, "write")) { errno = ENOSPC; return -1; }
    return real_write(fd, buf, count);
}

ssize_t pwrite(int fd, const void *buf, size_t count, off_t offset) {
    if (armed_for(fd, "write")) { errno = ENOSPC; return -1; }
    return real_pwrite(fd, buf, count, offset);
}

ssize_t pwrite64(int fd, const void *buf, size_t count, off64_t offset) {
    if (armed_for(fd, "write")) { errno = ENOSPC; return -1; }
    return real_pwrite64(fd, buf, count, offset);
}

int fsync(int fd) {
    if (armed_for(fd, "fsync")) { errno = EIO; return -1; }
    return real_fsync(fd);
}

int fdatasync(int fd) {
    if (armed_for(fd, "fsync")) { errno = EIO; return -1; }
    return real_fdatasync(fd);
}
