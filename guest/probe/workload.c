/*
 * Ferry probe workload: the program the `probe` test guest runs (started by /init).
 *
 * Options are `ferry.*` words. They are taken from argv when any argv word starts
 * with "ferry." (the guest /init passes the ferry.* words of the kernel command
 * line); otherwise they are read directly from /proc/cmdline. Unknown words are
 * ignored.
 *
 *   ferry.disk=/dev/vda      data disk (default /dev/vda, the first virtio-blk disk)
 *   ferry.nowriter           no disk writer
 *   ferry.dirty=MIB[@MIBPS]  memory dirtier: MIB MiB, one byte written per 4 KiB page,
 *                            cyclically; at MIBPS MiB/s (10 ms steps) or flat out
 *   ferry.wint=MS            writer interval between records in ms (default 10)
 *
 * Output (each line one write(2) under a mutex, to stdout = the serial console):
 *   ferry-hb SEQ GUEST_MS          every 20 ms, SEQ from 1 (+1 per line), CLOCK_MONOTONIC ms
 *   ferry-writer start=SEQ slots=N after the resume scan
 *   ferry-ack SEQ                  record SEQ is on the disk (O_DIRECT|O_DSYNC pwrite done)
 *   ferry-writer-error SEQ ERR     write failed (retried after 100 ms); `0 nodisk` if no disk
 *   ferry-probe-ready              all threads run
 *   ferry-dirty mib=MIB rate=R     dirtier started (R = MiB/s, 0 = unlimited)
 *   ferry-powerdown                ACPI power button seen: sync and power off
 *
 * Record format (guest/records.ts must match): 4096-byte blocks in a circular log of
 * N = min(disk size, 64 MiB) / 4096 slots; record SEQ at byte (SEQ % N) * 4096.
 * Little endian: "FERRYREC", u64 seq, u32 N, u32 0, 1017 u32 xorshift32 words seeded
 * with (u32)(seq ^ (seq >> 32) ^ 0x9E3779B9) (0 -> 1), u32 CRC-32 (zlib) of bytes 0..4091.
 *
 * Power button: the ACPI `button` driver reports it as KEY_POWER on an evdev node;
 * a thread watches /dev/input/event* and, on KEY_POWER, syncs and powers off.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <linux/input.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/reboot.h>
#include <time.h>
#include <unistd.h>

#define REC_SIZE 4096u
#define MAX_LOG_BYTES (64ull * 1024 * 1024)
#define PAYLOAD_WORDS 1017u
#define SCAN_CHUNK (1024u * 1024u)

static const char *opt_disk = "/dev/vda";
static int opt_nowriter = 0;
static long opt_dirty_mib = 0;
static long opt_dirty_rate = 0; /* MiB/s, 0 = unlimited */
static long opt_wint = 10;

static pthread_mutex_t out_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t start_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t start_cv = PTHREAD_COND_INITIALIZER;
static int started = 0;

static void out(const char *fmt, ...) {
  char buf[256];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  if ((size_t)n >= sizeof buf) n = sizeof buf - 1;
  pthread_mutex_lock(&out_mu);
  size_t off = 0;
  while (off < (size_t)n) {
    ssize_t w = write(1, buf + off, (size_t)n - off);
    if (w < 0) {
      if (errno == EINTR) continue;
      break;
    }
    off += (size_t)w;
  }
  pthread_mutex_unlock(&out_mu);
}

static void mark_started(void) {
  pthread_mutex_lock(&start_mu);
  started++;
  pthread_cond_broadcast(&start_cv);
  pthread_mutex_unlock(&start_mu);
}

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  while (clock_nanosleep(CLOCK_MONOTONIC, 0, &ts, &ts) == EINTR) {
  }
}

static const char *errname(int e, char *buf, size_t len) {
  const char *s = strerrorname_np(e);
  if (s) return s;
  snprintf(buf, len, "%d", e);
  return buf;
}

/* ---- records ---- */

static uint32_t crc_table[256];

static void crc_init(void) {
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
    crc_table[i] = c;
  }
}

static uint32_t crc32_ieee(const uint8_t *p, size_t n) {
  uint32_t c = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; i++) c = crc_table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

static void put32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
}
static void put64(uint8_t *p, uint64_t v) { put32(p, (uint32_t)v); put32(p + 4, (uint32_t)(v >> 32)); }
static uint32_t get32(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t get64(const uint8_t *p) { return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32; }

static void make_record(uint8_t *b, uint64_t seq, uint32_t nslots) {
  memcpy(b, "FERRYREC", 8);
  put64(b + 8, seq);
  put32(b + 16, nslots);
  put32(b + 20, 0);
  uint32_t x = (uint32_t)(seq ^ (seq >> 32) ^ 0x9E3779B9u);
  if (x == 0) x = 1;
  for (uint32_t i = 0; i < PAYLOAD_WORDS; i++) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    put32(b + 24 + 4 * i, x);
  }
  put32(b + 4092, crc32_ieee(b, 4092));
}

/* Valid record in `slot`? Returns its seq, or 0. */
static uint64_t parse_record(const uint8_t *b, uint64_t slot, uint32_t nslots) {
  if (memcmp(b, "FERRYREC", 8) != 0) return 0;
  if (get32(b + 4092) != crc32_ieee(b, 4092)) return 0;
  if (get32(b + 16) != nslots) return 0;
  uint64_t seq = get64(b + 8);
  if (seq == 0 || seq % nslots != slot) return 0;
  return seq;
}

/* ---- threads ---- */

static void *heartbeat_thread(void *arg) {
  (void)arg;
  mark_started();
  for (uint64_t seq = 1;; seq++) {
    out("ferry-hb %llu %llu\n", (unsigned long long)seq, (unsigned long long)now_ms());
    sleep_ms(20);
  }
  return NULL;
}

static void *writer_thread(void *arg) {
  (void)arg;
  char eb[32];
  int fd = -1;
  /* The disk node may appear a moment after the driver loads: wait up to ~1 s. */
  for (int i = 0; i < 10; i++) {
    fd = open(opt_disk, O_RDWR | O_DIRECT | O_DSYNC | O_CLOEXEC);
    if (fd >= 0 || errno != ENOENT) break;
    sleep_ms(100);
  }
  uint64_t size = 0;
  if (fd < 0 || ioctl(fd, BLKGETSIZE64, &size) != 0 || size < REC_SIZE) {
    out("ferry-writer-error 0 nodisk\n");
    if (fd >= 0) close(fd);
    mark_started();
    return NULL;
  }
  uint64_t logbytes = size < MAX_LOG_BYTES ? size : MAX_LOG_BYTES;
  uint32_t nslots = (uint32_t)(logbytes / REC_SIZE);
  logbytes = (uint64_t)nslots * REC_SIZE;

  /* Resume scan: highest valid seq in the log. */
  uint8_t *chunk;
  if (posix_memalign((void **)&chunk, REC_SIZE, SCAN_CHUNK) != 0) abort();
  uint64_t highest = 0;
  for (uint64_t off = 0; off < logbytes;) {
    size_t want = logbytes - off < SCAN_CHUNK ? (size_t)(logbytes - off) : SCAN_CHUNK;
    ssize_t r = pread(fd, chunk, want, (off_t)off);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      out("ferry-writer-error 0 scan-%s\n", r < 0 ? errname(errno, eb, sizeof eb) : "eof");
      break;
    }
    size_t nblk = (size_t)r / REC_SIZE;
    for (size_t i = 0; i < nblk; i++) {
      uint64_t s = parse_record(chunk + i * REC_SIZE, off / REC_SIZE + i, nslots);
      if (s > highest) highest = s;
    }
    if (nblk == 0) break;
    off += nblk * REC_SIZE;
  }
  free(chunk);

  uint8_t *rec;
  if (posix_memalign((void **)&rec, REC_SIZE, REC_SIZE) != 0) abort();
  uint64_t seq = highest + 1;
  out("ferry-writer start=%llu slots=%u\n", (unsigned long long)seq, nslots);
  mark_started();
  for (;;) {
    make_record(rec, seq, nslots);
    ssize_t w = pwrite(fd, rec, REC_SIZE, (off_t)((seq % nslots) * REC_SIZE));
    if (w == (ssize_t)REC_SIZE) {
      out("ferry-ack %llu\n", (unsigned long long)seq);
      seq++;
      if (opt_wint > 0) sleep_ms(opt_wint);
    } else {
      if (w >= 0)
        out("ferry-writer-error %llu short-%zd\n", (unsigned long long)seq, w);
      else
        out("ferry-writer-error %llu %s\n", (unsigned long long)seq, errname(errno, eb, sizeof eb));
      sleep_ms(100);
    }
  }
  return NULL;
}

static void *dirty_thread(void *arg) {
  (void)arg;
  size_t bytes = (size_t)opt_dirty_mib * 1024 * 1024;
  uint8_t *mem = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) {
    out("ferry-dirty-error %s\n", strerror(errno));
    mark_started();
    return NULL;
  }
  size_t npages = bytes / 4096;
  out("ferry-dirty mib=%ld rate=%ld\n", opt_dirty_mib, opt_dirty_rate);
  mark_started();
  size_t page = 0;
  uint8_t val = 1;
  if (opt_dirty_rate <= 0) {
    for (;;) {
      for (page = 0; page < npages; page++) mem[page * 4096] = val;
      if (++val == 0) val = 1;
    }
  }
  /* Paced: pages per 10 ms step = rate MiB/s * 256 pages/MiB / 100, with a fractional carry. */
  double per_step = (double)opt_dirty_rate * 256.0 / 100.0, carry = 0;
  struct timespec next;
  clock_gettime(CLOCK_MONOTONIC, &next);
  for (;;) {
    carry += per_step;
    size_t n = (size_t)carry;
    carry -= (double)n;
    while (n--) {
      mem[page * 4096] = val;
      if (++page == npages) {
        page = 0;
        if (++val == 0) val = 1;
      }
    }
    next.tv_nsec += 10000000L;
    if (next.tv_nsec >= 1000000000L) { next.tv_nsec -= 1000000000L; next.tv_sec++; }
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    /* More than 1 s behind (e.g. the VM was paused): restart pacing from now. */
    if ((now.tv_sec - next.tv_sec) * 1000000000L + (now.tv_nsec - next.tv_nsec) > 1000000000L) next = now;
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL) == EINTR) {
    }
  }
  return NULL;
}

static void power_off(void) {
  out("ferry-powerdown\n");
  sync();
  reboot(RB_POWER_OFF);
  _exit(0);
}

/* Watches every /dev/input/event* for KEY_POWER (the ACPI power button). */
static void *button_thread(void *arg) {
  (void)arg;
  struct pollfd fds[32];
  int nfds = 0;
  for (int tries = 0; nfds == 0; tries++) {
    DIR *d = opendir("/dev/input");
    if (d) {
      struct dirent *e;
      while ((e = readdir(d)) && nfds < 32) {
        if (strncmp(e->d_name, "event", 5) != 0) continue;
        char p[300];
        snprintf(p, sizeof p, "/dev/input/%s", e->d_name);
        int fd = open(p, O_RDONLY | O_CLOEXEC);
        if (fd >= 0) fds[nfds++] = (struct pollfd){.fd = fd, .events = POLLIN};
      }
      closedir(d);
    }
    if (nfds == 0) sleep_ms(tries < 20 ? 100 : 2000);
  }
  for (;;) {
    if (poll(fds, (nfds_t)nfds, -1) < 0) continue;
    for (int i = 0; i < nfds; i++) {
      if (!(fds[i].revents & POLLIN)) continue;
      struct input_event ev[16];
      ssize_t r = read(fds[i].fd, ev, sizeof ev);
      for (ssize_t k = 0; r > 0 && k < r / (ssize_t)sizeof ev[0]; k++)
        if (ev[k].type == EV_KEY && ev[k].code == KEY_POWER && ev[k].value == 1) power_off();
    }
  }
  return NULL;
}

/* ---- options ---- */

static void apply_opt(char *w) {
  if (strncmp(w, "ferry.disk=", 11) == 0) {
    opt_disk = strdup(w + 11);
  } else if (strcmp(w, "ferry.nowriter") == 0) {
    opt_nowriter = 1;
  } else if (strncmp(w, "ferry.dirty=", 12) == 0) {
    char *at = strchr(w + 12, '@');
    opt_dirty_mib = strtol(w + 12, NULL, 10);
    opt_dirty_rate = at ? strtol(at + 1, NULL, 10) : 0;
  } else if (strncmp(w, "ferry.wint=", 11) == 0) {
    opt_wint = strtol(w + 11, NULL, 10);
    if (opt_wint < 0) opt_wint = 0;
  }
}

static void parse_opts(int argc, char **argv) {
  int from_argv = 0;
  for (int i = 1; i < argc; i++)
    if (strncmp(argv[i], "ferry.", 6) == 0) from_argv = 1;
  if (from_argv) {
    for (int i = 1; i < argc; i++) apply_opt(argv[i]);
    return;
  }
  static char cmd[4096];
  int fd = open("/proc/cmdline", O_RDONLY);
  if (fd < 0) return;
  ssize_t n = read(fd, cmd, sizeof cmd - 1);
  close(fd);
  if (n <= 0) return;
  cmd[n] = 0;
  for (char *save = NULL, *w = strtok_r(cmd, " \t\n", &save); w; w = strtok_r(NULL, " \t\n", &save)) apply_opt(w);
}

static void spawn(void *(*fn)(void *)) {
  pthread_t t;
  pthread_attr_t a;
  pthread_attr_init(&a);
  pthread_attr_setstacksize(&a, 256 * 1024);
  if (pthread_create(&t, &a, fn, NULL) != 0) {
    out("ferry-probe-error pthread_create\n");
    exit(1);
  }
  pthread_attr_destroy(&a);
}

int main(int argc, char **argv) {
  crc_init();
  parse_opts(argc, argv);
  int want = 0;
  spawn(button_thread);
  spawn(heartbeat_thread), want++;
  if (!opt_nowriter) spawn(writer_thread), want++;
  if (opt_dirty_mib > 0) spawn(dirty_thread), want++;
  pthread_mutex_lock(&start_mu);
  while (started < want) pthread_cond_wait(&start_cv, &start_mu);
  pthread_mutex_unlock(&start_mu);
  out("ferry-probe-ready\n");
  for (;;) pause();
  return 0;
}
