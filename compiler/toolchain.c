/* toolchain.c -- clang discovery, flags, identity, and parallel compilation of emitted kernel
 * sources into object files (see toolchain.h).  No LLVM headers here: jit.c loads the
 * objects. */
#include "toolchain.h"
#include "emit.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef TICKET_CLANG
#define TICKET_CLANG "clang-16"
#endif

/* -O2 is as fast as -O3 on these kernels (the hot loops are written out by hand) and
 * compiles faster.  No -fopenmp: the host owns the threads.
 * The large code model, without PIC: every reference to a constant pool or a function is a
 * 64-bit absolute address.  With the default (small) model the JIT patches 32-bit pc-relative
 * offsets, and a process that maps gigabytes of activations between two kernel objects can get
 * an object's code and its constants more than 2 GB apart: the offset is then silently
 * truncated (seen: a vmovapd of a shuffle-mask constant from an unmapped address, resnet18 at
 * batch 128 with a second engine built later). */
#if defined(__x86_64__) || defined(__aarch64__)
#define TK_CC_MODEL "-fno-pic -mcmodel=large "
#else
#define TK_CC_MODEL "-fPIC "
#endif
#define TK_CC_FLAGS                                                                          \
  "-std=gnu11 -O2 -march=native -ffp-contract=fast -fno-math-errno " TK_CC_MODEL             \
  "-fno-stack-protector -fno-asynchronous-unwind-tables -Wall -Wextra"

const char *tk_cc_flags(void) { return TK_CC_FLAGS; }

static int executable(const char *p) {
  struct stat st;
  return p && *p && stat(p, &st) == 0 && S_ISREG(st.st_mode) && access(p, X_OK) == 0;
}

static int search_path(const char *name, char *out, size_t n) {
  const char *path = getenv("PATH");
  if (!path) path = "/usr/local/bin:/usr/bin:/bin";
  while (*path) {
    const char *c = strchr(path, ':');
    size_t len = c ? (size_t)(c - path) : strlen(path);
    if (len) {
      snprintf(out, n, "%.*s/%s", (int)len, path, name);
      if (executable(out)) return 1;
    }
    path += len + (c ? 1 : 0);
  }
  return 0;
}

const char *tk_cc_path(char *why, size_t why_len) {
  static char found[PATH_MAX];
  const char *env = getenv("TICKET_CLANG");
  if (env && *env) {
    if (strchr(env, '/')) {
      if (executable(env)) return env;
    } else if (search_path(env, found, sizeof found)) {
      return found;
    }
    if (why) snprintf(why, why_len, "TICKET_CLANG=%s is not an executable file", env);
    return NULL;
  }
  if (executable(TICKET_CLANG)) return TICKET_CLANG;
  if (search_path("clang-16", found, sizeof found) || search_path("clang", found, sizeof found)) return found;
  if (why) snprintf(why, why_len, "no clang-16 found (install clang-16 or set TICKET_CLANG)");
  return NULL;
}

/* First line of /proc/cpuinfo starting with `key`, hashed into h. */
static void hash_cpuinfo(tk_hash *h, char *model, size_t model_len) {
  FILE *f = fopen("/proc/cpuinfo", "r");
  if (!f) return;
  char line[8192];
  int got_model = 0, got_flags = 0;
  while (fgets(line, sizeof line, f) && !(got_model && got_flags)) {
    if (!got_model && !strncmp(line, "model name", 10)) {
      got_model = 1;
      tk_hash_update(h, line, strlen(line));
      const char *c = strchr(line, ':');
      if (c) snprintf(model, model_len, "%s", c + 2);
      model[strcspn(model, "\n")] = 0;
    } else if (!got_flags && (!strncmp(line, "flags", 5) || !strncmp(line, "Features", 8))) {
      got_flags = 1;
      tk_hash_update(h, line, strlen(line));
    }
  }
  fclose(f);
}

const char *tk_cc_identity(void) {
  static char id[512];
  static int done;
  if (done) return id;
  char why[256], model[128] = "unknown cpu";
  const char *cc = tk_cc_path(why, sizeof why);
  tk_hash h;
  tk_hash_init(&h, 0xCC);
  struct stat st;
  char real[PATH_MAX] = "none";
  if (cc) {
    if (!realpath(cc, real)) snprintf(real, sizeof real, "%s", cc);
    if (stat(real, &st) == 0) {
      int64_t v[2] = {(int64_t)st.st_size, (int64_t)st.st_mtime};
      tk_hash_update(&h, v, sizeof v);
    }
  }
  tk_hash_update(&h, real, strlen(real));
  tk_hash_update(&h, TK_CC_FLAGS, strlen(TK_CC_FLAGS));
  hash_cpuinfo(&h, model, sizeof model);
  uint64_t k[2];
  tk_hash_final(&h, k);
  snprintf(id, sizeof id, "%s [%s] %016" PRIx64 "%016" PRIx64, real, model, k[0], k[1]);
  done = 1;
  return id;
}

/* ---- compiling ---------------------------------------------------------------------------- */

static int ncpus(void) {
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n < 1 ? 1 : n > 64 ? 64 : (int)n;
}

static tk_status write_all(const char *path, const char *s, size_t n) {
  FILE *f = fopen(path, "wb");
  if (!f) return tk_fail(TK_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
  size_t w = fwrite(s, 1, n, f);
  if (fclose(f) != 0 || w != n) return tk_fail(TK_ERR_IO, "%s: short write", path);
  return TK_OK;
}

/* Splits a flag string on spaces into argv entries (copies kept in `store`). */
static int split_flags(const char *flags, char *store, size_t store_len, char **argv, int max) {
  int n = 0;
  snprintf(store, store_len, "%s", flags ? flags : "");
  for (char *tok = strtok(store, " "); tok && n < max; tok = strtok(NULL, " ")) argv[n++] = tok;
  return n;
}

tk_status tk_cc_compile(tk_cc_unit *units, int n, int jobs, const char *extra) {
  char why[256];
  const char *cc = tk_cc_path(why, sizeof why);
  if (!cc) return tk_fail(TK_ERR_UNSUPPORTED, "%s", why);
  if (n <= 0) return TK_OK;
  if (jobs <= 0) jobs = ncpus();
  if (jobs > n) jobs = n;
  const char *tmpbase = getenv("TMPDIR");
  char dir[PATH_MAX];
  snprintf(dir, sizeof dir, "%s/ticket-cc-XXXXXX", tmpbase && *tmpbase ? tmpbase : "/tmp");
  if (!mkdtemp(dir)) return tk_fail(TK_ERR_IO, "%s: cannot create a temporary directory: %s", dir, strerror(errno));

  tk_status st = TK_OK;
  int *group = tk_calloc((size_t)n, sizeof *group);
  int *order = tk_calloc((size_t)n, sizeof *order);
  size_t *load = tk_calloc((size_t)jobs, sizeof *load);
  pid_t *pids = tk_calloc((size_t)jobs, sizeof *pids);
  int *gstatus = tk_calloc((size_t)jobs, sizeof *gstatus);
  char **argv = tk_calloc((size_t)n + 80, sizeof *argv);
  char *names = tk_calloc((size_t)n, 24);
  char flagstore[2][1024];
  if (!group || !order || !load || !pids || !gstatus || !argv || !names) {
    st = TK_ERR_NOMEM;
    goto done;
  }
  for (int k = 0; k < n; k++) {
    char path[PATH_MAX + 32];
    snprintf(names + 24 * k, 24, "u%d.c", k);
    snprintf(path, sizeof path, "%s/%s", dir, names + 24 * k);
    if ((st = write_all(path, units[k].src, units[k].src_len)) != TK_OK) goto done;
    order[k] = k;
  }
  /* largest first onto the least loaded group */
  for (int a = 1; a < n; a++)
    for (int b = a; b > 0 && units[order[b]].src_len > units[order[b - 1]].src_len; b--) {
      int t = order[b];
      order[b] = order[b - 1], order[b - 1] = t;
    }
  for (int a = 0; a < n; a++) {
    int best = 0;
    for (int g = 1; g < jobs; g++)
      if (load[g] < load[best]) best = g;
    group[order[a]] = best;
    load[best] += units[order[a]].src_len + 4096;
  }
  for (int g = 0; g < jobs; g++) {
    int argc = 0;
    argv[argc++] = (char *)cc;
    argc += split_flags(TK_CC_FLAGS, flagstore[0], sizeof flagstore[0], argv + argc, 40);
    argc += split_flags(extra, flagstore[1], sizeof flagstore[1], argv + argc, 30);
    argv[argc++] = "-c";
    for (int k = 0; k < n; k++)
      if (group[k] == g) argv[argc++] = names + 24 * k;
    argv[argc] = NULL;
    char errpath[PATH_MAX + 32];
    snprintf(errpath, sizeof errpath, "%s/diag%d.txt", dir, g);
    pid_t pid = fork();
    if (pid < 0) {
      st = tk_fail(TK_ERR_COMPILE, "cannot start %s: %s", cc, strerror(errno));
      for (int q = 0; q < g; q++) waitpid(pids[q], &gstatus[q], 0);
      goto done;
    }
    if (pid == 0) {
      int fd = open(errpath, O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (chdir(dir) != 0 || fd < 0) _exit(126);
      dup2(fd, 1);
      dup2(fd, 2);
      execv(cc, argv);
      _exit(127);
    }
    pids[g] = pid;
  }
  for (int g = 0; g < jobs; g++)
    while (waitpid(pids[g], &gstatus[g], 0) < 0 && errno == EINTR) {
    }
  /* collect objects; the first unit without one is the one reported */
  int bad = -1;
  for (int k = 0; k < n; k++) {
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/u%d.o", dir, k);
    void *data = NULL;
    size_t len = 0;
    int gs = gstatus[group[k]];
    if (WIFEXITED(gs) && WEXITSTATUS(gs) == 0 && tk_read_file(path, (size_t)1 << 31, &data, &len) == TK_OK) {
      units[k].obj = data;
      units[k].obj_len = len;
    } else if (bad < 0) {
      free(data);
      bad = k;
    }
  }
  if (bad >= 0) {
    int g = group[bad];
    char errpath[PATH_MAX + 32];
    snprintf(errpath, sizeof errpath, "%s/diag%d.txt", dir, g);
    void *diag = NULL;
    size_t dlen = 0;
    tk_read_file(errpath, 1 << 20, &diag, &dlen);
    /* the unit named by clang's first error, if it names one of ours */
    char first[256] = "";
    const char *d = diag ? (const char *)diag : "";
    const char *e = strstr(d, "error:");
    if (e) {
      const char *ls = e;
      while (ls > d && ls[-1] != '\n') ls--;
      int k;
      if (sscanf(ls, "u%d.c", &k) == 1 && k >= 0 && k < n) bad = k;
      const char *le = strchr(e, '\n');
      snprintf(first, sizeof first, ": %.*s", (int)(le ? le - e : (ptrdiff_t)strlen(e)), e);
    }
    if (dlen) {
      fprintf(stderr, "---- clang diagnostics (%s; u%d.c is %s) ----\n", cc, bad, units[bad].name);
      fwrite(d, 1, dlen, stderr);
      fprintf(stderr, "---- end of clang diagnostics ----\n");
    }
    int gs = gstatus[g];
    if (WIFSIGNALED(gs))
      st = tk_fail(TK_ERR_COMPILE, "%s: %s was killed by signal %d compiling the generated kernel", units[bad].name, cc,
                   WTERMSIG(gs));
    else if (WIFEXITED(gs) && WEXITSTATUS(gs) == 127)
      st = tk_fail(TK_ERR_COMPILE, "%s: cannot run %s", units[bad].name, cc);
    else
      st = tk_fail(TK_ERR_COMPILE, "%s: clang failed on the generated kernel%s", units[bad].name,
                   first[0] ? first : " (diagnostics above)");
    free(diag);
    for (int k = 0; k < n; k++) {
      free(units[k].obj);
      units[k].obj = NULL;
      units[k].obj_len = 0;
    }
  }
done:
  if (names) {
    for (int k = 0; k < n; k++) {
      char path[PATH_MAX + 32];
      snprintf(path, sizeof path, "%s/u%d.c", dir, k);
      unlink(path);
      snprintf(path, sizeof path, "%s/u%d.o", dir, k);
      unlink(path);
    }
  }
  for (int g = 0; g < jobs; g++) {
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/diag%d.txt", dir, g);
    unlink(path);
  }
  rmdir(dir);
  if (st == TK_ERR_NOMEM) tk_fail(TK_ERR_NOMEM, "out of memory compiling %d kernels", n);
  free(group);
  free(order);
  free(load);
  free(pids);
  free(gstatus);
  free(argv);
  free(names);
  return st;
}
