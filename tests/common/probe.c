/* What a hostile job or another local user tries, as a static program the
 * tests run inside a sandbox (packaged as a toolchain) or under another uid.
 * Each mode prints one line per attempt: what it tried and what happened.
 *
 *   probe calls              system calls a job must not get
 *   probe forks N            fork N children (each sleeps), count successes
 *   probe read PATH...       which files can be opened for reading
 *   probe connect SOCKET     connect to a Unix socket, send a greeting, and
 *                            say whether anything came back
 *   probe mem N MB           N children each touch MB megabytes at once;
 *                            how many of them lived to say so
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *res(long r) { return r >= 0 ? "ok" : strerror(errno); }

static int calls(void) {
  printf("unshare-user %s\n", res(unshare(CLONE_NEWUSER)));
  printf("unshare-net %s\n", res(unshare(CLONE_NEWNET)));
  printf("clone-newuser %s\n",
         res(syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0)));
  printf("keyctl %s\n", res(syscall(SYS_keyctl, 0, 0, 0, 0, 0)));
  printf("bpf %s\n", res(syscall(SYS_bpf, 0, 0, 0)));
  printf("ptrace %s\n", res(syscall(SYS_ptrace, 0, 0, 0, 0)));
  printf("io_uring %s\n", res(syscall(SYS_io_uring_setup, 1, 0)));
  printf("mount %s\n", res(syscall(SYS_mount, "none", "/tmp", "tmpfs", 0, 0)));
  printf("vsock %s\n", res(socket(AF_VSOCK, SOCK_STREAM, 0)));
#ifdef __x86_64__
  printf("x32 %s\n", res(syscall(0x40000000 | SYS_getpid)));
#else
  printf("x32 %s\n", strerror(ENOSYS));
#endif
  printf("clone3 %s\n", res(syscall(SYS_clone3, 0, 0)));
  printf("getpid %s\n", res(syscall(SYS_getpid)));
  return 0;
}

static int forks(int n) {
  int ok = 0;
  for (int i = 0; i < n; i++) {
    pid_t p = fork();
    if (p == 0) {
      sleep(3);
      _exit(0);
    }
    if (p > 0) ok++;
  }
  printf("forked %d of %d\n", ok, n);
  fflush(stdout);
  while (wait(NULL) > 0) {
  }
  return 0;
}

static int mems(int n, long mb) {
  for (int i = 0; i < n; i++) {
    if (fork() == 0) {
      /* volatile: a compiler may drop an allocation nobody reads. */
      volatile char *p = malloc(mb << 20);
      if (!p) _exit(1);
      for (long i = 0; i < (mb << 20); i += 4096) p[i] = 1;
      sleep(2);
      _exit(p[mb << 19] == 1 ? 0 : 1);
    }
  }
  int lived = 0, status;
  while (wait(&status) > 0)
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) lived++;
  printf("lived %d of %d\n", lived, n);
  return 0;
}

static int reads(int argc, char **argv) {
  for (int i = 0; i < argc; i++) {
    int fd = open(argv[i], O_RDONLY | O_NONBLOCK);
    if (fd >= 0) {
      printf("readable %s\n", argv[i]);
      close(fd);
    }
  }
  printf("done\n");
  return 0;
}

static int connects(const char *path) {
  int s = socket(AF_UNIX, SOCK_STREAM, 0);
  struct sockaddr_un a = {.sun_family = AF_UNIX};
  strncpy(a.sun_path, path, sizeof a.sun_path - 1);
  if (connect(s, (struct sockaddr *)&a, sizeof a) != 0) {
    printf("connect %s\n", strerror(errno));
    return 0;
  }
  /* A node that hangs up on us may do so before we are done writing: a
     write that fails then means no answer, as a read of nothing does. */
  signal(SIGPIPE, SIG_IGN);
  /* A local protocol Hello (length 8: variant 0, version 1). */
  unsigned char hello[] = {0, 0, 0, 8, 0, 0, 0, 0, 1, 0, 0, 0};
  /* The answer comes with the next request's: ask for the stats (variant 9). */
  unsigned char stats[] = {0, 0, 0, 4, 9, 0, 0, 0};
  ssize_t n = -1;
  if (write(s, hello, sizeof hello) >= 0 && write(s, stats, sizeof stats) >= 0) {
    char buf[64];
    n = read(s, buf, sizeof buf);
  }
  printf("connect ok, answer %s\n", n > 0 ? "yes" : "none");
  return 0;
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (argc >= 2 && !strcmp(argv[1], "calls")) return calls();
  if (argc >= 3 && !strcmp(argv[1], "forks")) return forks(atoi(argv[2]));
  if (argc >= 2 && !strcmp(argv[1], "read")) return reads(argc - 2, argv + 2);
  if (argc >= 4 && !strcmp(argv[1], "mem")) return mems(atoi(argv[2]), atol(argv[3]));
  if (argc >= 3 && !strcmp(argv[1], "connect")) return connects(argv[2]);
  fprintf(stderr, "usage: probe calls|forks N|read PATH...|connect SOCKET\n");
  return 2;
}
