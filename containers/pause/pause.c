/* ironpool-pause: the sandbox process of every pod on the test node (containerd's
 * sandbox image). PID 1 of the pod: it holds the pod's namespaces open, reaps the
 * zombies that processes sharing its PID namespace leave, and exits on SIGINT/SIGTERM.
 * Built static with musl by e2e/scripts/build-images.sh. */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) {
  (void)sig;
  _exit(0);
}

static void reap(int sig) {
  (void)sig;
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
}

int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "-v") == 0) {
    puts("ironpool-pause");
    return 0;
  }
  if (getpid() != 1) fputs("ironpool-pause: warning: not PID 1\n", stderr);
  struct sigaction term = {.sa_handler = stop};
  struct sigaction child = {.sa_handler = reap, .sa_flags = SA_NOCLDSTOP | SA_RESTART};
  if (sigaction(SIGINT, &term, NULL) < 0 || sigaction(SIGTERM, &term, NULL) < 0 ||
      sigaction(SIGCHLD, &child, NULL) < 0) {
    perror("ironpool-pause: sigaction");
    return 1;
  }
  for (;;) pause();
}
