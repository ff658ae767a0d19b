/* loadgen: the closed-loop load generator of evloop's benchmarks.
 *
 * Theory of operation. One process, one thread, one epoll set, so that the
 * client costs a small fraction of the server it measures (its CPU time is
 * reported next to the server's, and the runner pins the two to different
 * cores). Every connection sends the same request over and over, so the
 * outgoing stream is that request repeated: a connection only remembers how
 * many bytes of it are still owed and where in the request it stands.
 *
 * Modes (--mode):
 *   echo  LengthSep framing, "<digits>\n<body>"; the echo comes back byte for
 *         byte and is compared with what was sent. --depth requests in flight
 *         per connection; --idle extra connections are served once and then
 *         left idle while the others are measured.
 *   json  jsocket 2.x framing: "!4sII" = b"JSN1", payload length, CRC-32 of
 *         the payload, then UTF-8 JSON. Each reply's magic, size and CRC-32
 *         are checked; the payload is not compared (servers may re-encode it).
 *   conn  a connection per request on the echo wire: connect, send one
 *         request, read its echo, compare it, close (the client closes
 *         first, as a one-shot client does); --clients connections at a time.
 *   hold  open --clients connections, one request each (none with
 *         --silent 1), print a "held" line; on "serve" from stdin, one more
 *         request on every connection and a "served" line; exit at end of
 *         stdin.
 *
 * Open loop (echo, --rate R): instead of each connection asking again as
 * soon as it is answered, requests are sent on a fixed schedule, R per
 * second over all the connections in turn (as wrk2 does), whether or not
 * the earlier ones have been answered. Latency is counted from the time a
 * request was due, not from when it could be sent, so a server that falls
 * behind shows it; a connection more than RING requests behind is an error.
 *
 * CPU: the server's user and system time come from /proc/PID/stat (all its
 * threads, in clock ticks), this process's from getrusage(), both over the
 * measured window only. Output: one JSON object per line on stdout.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { M_ECHO, M_JSON, M_CONN, M_HOLD };

typedef struct {
    int fd;
    int open;          /* connected and registered */
    int connecting;
    int want_out;      /* EPOLLOUT is armed */
    int idle;          /* an idle connection: served once, then left alone */
    long out_left;     /* bytes of the request stream still to write */
    long out_pos;      /* position inside the request template */
    long in_pos;       /* echo/conn: position inside the expected reply */
    long inflight;     /* requests sent and not yet answered */
    long done;         /* replies received on this connection */
    /* json reply parsing */
    unsigned char hdr[12];
    int hdr_have;
    long body_left;
    uint32_t crc, want_crc;
    /* open loop: when each request in flight was due (a ring) */
    double *due;
    int due_head, due_count;
} conn_t;

enum { RING = 1024 };
/* open-loop latency histogram: 10 us buckets up to 1 s, then one overflow */
enum { HBUCKETS = 100001 };
static long hist[HBUCKETS];
static long hist_count;
static double lat_max;

static struct {
    const char *host;
    int port, mode, clients, depth, size, idle, sources, source_first, server_pid, silent;
    double warmup, duration, timeout, rate;
    const char *payload;
} opt = {"127.0.0.1", 0, M_ECHO, 50, 1, 64, 0, 1, 1, 0, 0, 0.5, 2.0, 60.0, 0.0, NULL};

static unsigned char *req;      /* one request */
static long req_len;
static unsigned char *burst;    /* the request repeated, for large writes */
static long burst_len;
static int ep;
static conn_t *conns;
static int nconns;
static long total_done, errors, connect_failures, active_opened;
static int measuring, stopping;
static char first_error[200];
static uint32_t crc_table[256];
static struct sockaddr_in server_addr;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double self_cpu(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

/* utime and stime of the server, every thread, in seconds, and its minor
 * page faults (a fault per request means memory mapped and unmapped per
 * request: see docs/benchmarks.md); -1 if unknown. */
static int server_cpu(double *user, double *sys, double *faults) {
    char path[64], buf[1024];
    *user = *sys = *faults = -1;
    if (opt.server_pid <= 0) return -1;
    snprintf(path, sizeof path, "/proc/%d/stat", opt.server_pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')'); /* the command name may hold spaces */
    if (!p) return -1;
    unsigned long minflt = 0, utime = 0, stime = 0;
    /* after ")": state(3) ppid pgrp session tty tpgid flags minflt(10) cminflt majflt cmajflt utime(14) stime(15) */
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %lu %*u %*u %*u %lu %lu", &minflt, &utime, &stime) != 3)
        return -1;
    *faults = (double)minflt;
    *user = (double)utime / sysconf(_SC_CLK_TCK);
    *sys = (double)stime / sysconf(_SC_CLK_TCK);
    return 0;
}

static void note_error(const char *fmt, ...) {
    errors++;
    if (!first_error[0]) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(first_error, sizeof first_error, fmt, ap);
        va_end(ap);
    }
}

static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
}

static uint32_t crc_update(uint32_t crc, const unsigned char *p, long n) {
    crc = ~crc;
    while (n--) crc = crc_table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

static void json_escape(FILE *f, const char *s) {
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') fputc('\\', f);
        fputc((unsigned char)*s < 0x20 ? ' ' : *s, f);
    }
}

static void arm(conn_t *c, int out) {
    if (c->want_out == out || c->want_out < 0) return;  /* < 0: edge-triggered, never modified */
    struct epoll_event ev = {.events = EPOLLIN | (out ? EPOLLOUT : 0), .data.ptr = c};
    if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) < 0) note_error("epoll_ctl: %s", strerror(errno));
    c->want_out = out;
}

static void drop(conn_t *c) {
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
    c->open = c->connecting = c->want_out = 0;
}

/* Start a non-blocking connect; the source address is spread over
 * 127.0.0.<source_first ...> so more than one port range is available. */
static int start_connect(conn_t *c, int index) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        connect_failures++;
        note_error("socket: %s", strerror(errno));
        return -1;
    }
    int one = 1;
    /* conn mode writes one small request and only reads after it */
    if (opt.mode != M_CONN) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (opt.sources > 1 || opt.source_first != 1) {
        struct sockaddr_in src = {.sin_family = AF_INET};
        src.sin_addr.s_addr = htonl(0x7f000000u + opt.source_first + index % opt.sources);
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        if (bind(fd, (struct sockaddr *)&src, sizeof src) < 0) {
            close(fd);
            connect_failures++;
            note_error("bind: %s", strerror(errno));
            return -1;
        }
    }
    int idle = c->idle;
    memset(c, 0, sizeof *c);
    c->idle = idle;
    c->fd = fd;
    if (connect(fd, (struct sockaddr *)&server_addr, sizeof server_addr) < 0 && errno != EINPROGRESS) {
        connect_failures++;
        note_error("connect: %s", strerror(errno));
        close(fd);
        c->fd = -1;
        return -1;
    }
    c->connecting = 1;
    c->want_out = 1;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    if (opt.mode == M_CONN) {
        /* A connection lives for one exchange: edge-triggered, registered
         * once, so the client spends no epoll_ctl(MOD) on it. */
        ev.events |= EPOLLET;
        c->want_out = -1;
    }
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    return 0;
}

static void queue_requests(conn_t *c, long count) {
    c->out_left += count * req_len;
    c->inflight += count;
}

static void flush_out(conn_t *c) {
    while (c->out_left > 0) {
        long chunk = burst_len - c->out_pos;
        if (chunk > c->out_left) chunk = c->out_left;
        ssize_t n = send(c->fd, burst + c->out_pos, chunk, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) break;
            note_error("send: %s", strerror(errno));
            drop(c);
            return;
        }
        c->out_left -= n;
        c->out_pos = (c->out_pos + n) % req_len;
    }
    arm(c, c->out_left > 0);
}

static void record_latency(double seconds) {
    long bucket = (long)(seconds * 1e5);  /* 10 us buckets */
    if (bucket < 0) bucket = 0;
    if (bucket >= HBUCKETS) bucket = HBUCKETS - 1;
    hist[bucket]++;
    hist_count++;
    if (seconds > lat_max) lat_max = seconds;
}

/* The latency below which a fraction q of the replies came, in seconds. */
static double latency_quantile(double q) {
    long want = (long)(q * hist_count), seen = 0;
    for (long i = 0; i < HBUCKETS; i++) {
        seen += hist[i];
        if (seen > want) return (i + 1) / 1e5;
    }
    return lat_max;
}

/* One reply finished on c: count it and, under closed-loop load, ask again. */
static void reply_done(conn_t *c) {
    c->done++;
    c->inflight--;
    if (c->idle || opt.mode == M_HOLD) return;
    if (measuring) total_done++;
    if (opt.rate > 0) {
        double due = c->due[c->due_head];
        c->due_head = (c->due_head + 1) % RING;
        c->due_count--;
        if (measuring) record_latency(now() - due);
        return;
    }
    if (!stopping) queue_requests(c, 1);
}

/* Open loop: send every request that has come due by now, one connection
 * after another; returns the time the next one is due. */
static double send_due(double t0, long *sent, int *next_conn) {
    double t = now();
    long due = (long)((t - t0) * opt.rate) + 1;
    while (*sent < due) {
        conn_t *c = &conns[*next_conn];
        *next_conn = (*next_conn + 1) % opt.clients;
        if (c->fd < 0 || !c->open) {
            (*sent)++;
            continue;
        }
        if (c->due_count == RING) {
            note_error("open loop: the server is more than %d requests behind on a connection", RING);
            return t;
        }
        c->due[(c->due_head + c->due_count) % RING] = t0 + *sent / opt.rate;
        c->due_count++;
        (*sent)++;
        queue_requests(c, 1);
        flush_out(c);
    }
    return t0 + *sent / opt.rate;
}

static void on_connected(conn_t *c) {
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) {
        connect_failures++;
        note_error("connect: %s", strerror(err));
        drop(c);
        return;
    }
    c->connecting = 0;
    c->open = 1;
    if (!c->idle) active_opened++;
    if (opt.mode == M_HOLD && opt.silent) {
        arm(c, 0);  /* connected, and not a byte sent until "serve" */
        return;
    }
    if (opt.rate > 0 && !c->idle) {
        if (!c->due) c->due = malloc(RING * sizeof *c->due);
        arm(c, 0);  /* the schedule sends, from the main loop */
        return;
    }
    if (opt.mode == M_HOLD || c->idle)
        queue_requests(c, 1);
    else
        queue_requests(c, opt.mode == M_CONN ? 1 : opt.depth);
    flush_out(c);
}

static void on_readable(conn_t *c, int index) {
    static unsigned char buf[256 * 1024];
    for (;;) {
        ssize_t n = recv(c->fd, buf, sizeof buf, 0);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) return;
            note_error("recv: %s", strerror(errno));
            drop(c);
            return;
        }
        if (n == 0) {
            note_error("the server closed a connection (%ld replies on it)", c->done);
            drop(c);
            return;
        }
        unsigned char *p = buf;
        long left = n;
        if (opt.mode == M_CONN) {
            /* one request, its echo, then this side closes and starts over */
            if (c->in_pos + left > req_len || memcmp(p, req + c->in_pos, left) != 0) {
                note_error("conn: reply differs from the request");
                drop(c);
                return;
            }
            c->in_pos += left;
            if (c->in_pos < req_len) continue;
            if (measuring) total_done++;
            drop(c);
            if (!stopping) start_connect(c, index);
            return;
        }
        if (opt.mode == M_JSON) {
            while (left > 0) {
                if (c->hdr_have < 12) {
                    long take = 12 - c->hdr_have;
                    if (take > left) take = left;
                    memcpy(c->hdr + c->hdr_have, p, take);
                    c->hdr_have += take;
                    p += take;
                    left -= take;
                    if (c->hdr_have < 12) break;
                    if (memcmp(c->hdr, "JSN1", 4) != 0) {
                        note_error("json: bad magic in a reply");
                        drop(c);
                        return;
                    }
                    c->body_left = ((long)c->hdr[4] << 24) | (c->hdr[5] << 16) | (c->hdr[6] << 8) | c->hdr[7];
                    c->want_crc = ((uint32_t)c->hdr[8] << 24) | (c->hdr[9] << 16) | (c->hdr[10] << 8) | c->hdr[11];
                    c->crc = 0;
                    if (c->body_left > 10 * 1024 * 1024) {
                        note_error("json: reply length %ld", c->body_left);
                        drop(c);
                        return;
                    }
                }
                long take = c->body_left < left ? c->body_left : left;
                c->crc = crc_update(c->crc, p, take);
                c->body_left -= take;
                p += take;
                left -= take;
                if (c->body_left == 0) {
                    if (c->crc != c->want_crc) {
                        note_error("json: reply CRC-32 mismatch");
                        drop(c);
                        return;
                    }
                    c->hdr_have = 0;
                    reply_done(c);
                }
            }
        } else {
            /* echo and hold: the reply is the request, byte for byte */
            while (left > 0) {
                long take = req_len - c->in_pos;
                if (take > left) take = left;
                if (memcmp(p, req + c->in_pos, take) != 0) {
                    note_error("echo: reply differs from the request");
                    drop(c);
                    return;
                }
                c->in_pos += take;
                p += take;
                left -= take;
                if (c->in_pos == req_len) {
                    c->in_pos = 0;
                    reply_done(c);
                }
            }
        }
        if (c->out_left > 0 && c->fd >= 0) flush_out(c);
        if (c->fd < 0) return;
    }
}

/* Wait up to `timeout` seconds (epoll_pwait2: the open loop's schedule
 * needs finer steps than epoll_wait's milliseconds) and handle the events. */
static void dispatch_for(double timeout) {
    struct epoll_event evs[512];
    if (timeout < 0) timeout = 0;
    struct timespec ts = {.tv_sec = (time_t)timeout, .tv_nsec = (long)((timeout - (time_t)timeout) * 1e9)};
    int n = epoll_pwait2(ep, evs, 512, &ts, NULL);
    for (int i = 0; i < n; i++) {
        conn_t *c = evs[i].data.ptr;
        int index = (int)(c - conns);
        if (c->fd < 0) continue;
        if (c->connecting) {
            on_connected(c);
            continue;
        }
        if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) on_readable(c, index);
        if (c->fd >= 0 && (evs[i].events & EPOLLOUT)) flush_out(c);
    }
}

static void dispatch(int timeout_ms) { dispatch_for(timeout_ms / 1e3); }

/* Open conns[first..first+count) at most `window` connects at a time, each
 * answered once; returns when all have been or the deadline passed. */
static long open_and_serve_once(int first, int count, double deadline) {
    int next = first, end = first + count;
    for (;;) {
        long pending = 0, served = 0;
        for (int i = first; i < next; i++) {
            if (conns[i].fd < 0) continue;
            if (conns[i].done >= 1 || (opt.silent && conns[i].open)) served++;
            else pending++;
        }
        while (next < end && pending < 512) {
            if (start_connect(&conns[next], next) == 0) pending++;
            next++;
        }
        if (next == end && pending == 0) return served;
        if (now() > deadline) return served;
        dispatch(10);
    }
}

static void usage(void) {
    fprintf(stderr,
            "usage: loadgen --port P [--host 127.0.0.1] [--mode echo|json|conn|hold]\n"
            "  [--clients 50] [--depth 1] [--size 64] [--idle 0] [--payload JSON]\n"
            "  [--warmup 0.5] [--duration 2] [--timeout 60] [--server-pid PID]\n"
            "  [--sources 1] [--source-first 1] [--silent 0] [--rate 0 (open loop, echo)]\n");
    exit(2);
}

static void build_requests(void) {
    if (opt.mode == M_JSON) {
        const char *payload = opt.payload ? opt.payload
            : "{\"id\": 12345, \"method\": \"echo\", \"params\": {\"text\": \"hello, world\", \"n\": [1, 2, 3]}}";
        long plen = (long)strlen(payload);
        req_len = 12 + plen;
        req = malloc(req_len);
        uint32_t crc = crc_update(0, (const unsigned char *)payload, plen);
        memcpy(req, "JSN1", 4);
        uint32_t be_len = htonl((uint32_t)plen), be_crc = htonl(crc);
        memcpy(req + 4, &be_len, 4);
        memcpy(req + 8, &be_crc, 4);
        memcpy(req + 12, payload, plen);
    } else {
        char head[32];
        int hl = snprintf(head, sizeof head, "%d\n", opt.size);
        req_len = hl + opt.size;
        req = malloc(req_len);
        memcpy(req, head, hl);
        for (int i = 0; i < opt.size; i++) req[hl + i] = "abcdefghijklmnopqrstuvwxyz0123456789"[i % 36];
    }
    /* Enough copies that one send can carry a whole burst of pipelined requests. */
    long copies = opt.depth + 1;
    if (copies * req_len < 65536) copies = 65536 / req_len + 1;
    burst_len = copies * req_len;
    burst = malloc(burst_len);
    for (long i = 0; i < copies; i++) memcpy(burst + i * req_len, req, req_len);
}

static void print_common(FILE *f) {
    fprintf(f, "\"errors\": %ld, \"connect_failures\": %ld, \"first_error\": \"", errors, connect_failures);
    json_escape(f, first_error);
    fprintf(f, "\"");
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (i + 1 >= argc) usage();
        const char *v = argv[++i];
        if (!strcmp(a, "--host")) opt.host = v;
        else if (!strcmp(a, "--port")) opt.port = atoi(v);
        else if (!strcmp(a, "--mode")) {
            if (!strcmp(v, "echo")) opt.mode = M_ECHO;
            else if (!strcmp(v, "json")) opt.mode = M_JSON;
            else if (!strcmp(v, "conn")) opt.mode = M_CONN;
            else if (!strcmp(v, "hold")) opt.mode = M_HOLD;
            else usage();
        } else if (!strcmp(a, "--clients")) opt.clients = atoi(v);
        else if (!strcmp(a, "--depth")) opt.depth = atoi(v);
        else if (!strcmp(a, "--size")) opt.size = atoi(v);
        else if (!strcmp(a, "--idle")) opt.idle = atoi(v);
        else if (!strcmp(a, "--payload")) opt.payload = v;
        else if (!strcmp(a, "--warmup")) opt.warmup = atof(v);
        else if (!strcmp(a, "--duration")) opt.duration = atof(v);
        else if (!strcmp(a, "--timeout")) opt.timeout = atof(v);
        else if (!strcmp(a, "--server-pid")) opt.server_pid = atoi(v);
        else if (!strcmp(a, "--sources")) opt.sources = atoi(v);
        else if (!strcmp(a, "--silent")) opt.silent = atoi(v);
        else if (!strcmp(a, "--source-first")) opt.source_first = atoi(v);
        else if (!strcmp(a, "--rate")) opt.rate = atof(v);
        else usage();
    }
    if (opt.port <= 0 || opt.clients <= 0 || opt.depth <= 0 || opt.size < 0 || opt.sources <= 0) usage();
    if (opt.rate < 0 || (opt.rate > 0 && opt.mode != M_ECHO)) usage();
    server_addr.sin_family = AF_INET;
    server_addr.sin_port = htons(opt.port);
    if (inet_pton(AF_INET, opt.host, &server_addr.sin_addr) != 1) usage();
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    crc_init();
    build_requests();
    ep = epoll_create1(0);
    nconns = opt.clients + opt.idle;
    conns = calloc(nconns, sizeof *conns);
    for (int i = 0; i < nconns; i++) conns[i].fd = -1;
    double t0 = now();

    if (opt.mode == M_HOLD) {
        long held = open_and_serve_once(0, nconns, t0 + opt.timeout);
        printf("{\"phase\": \"held\", \"clients\": %d, \"held\": %ld, \"seconds\": %.3f, ", nconns, held, now() - t0);
        print_common(stdout);
        printf("}\n");
        fflush(stdout);
        char line[64];
        long round = opt.silent ? 0 : 1;
        while (fgets(line, sizeof line, stdin)) {
            if (strncmp(line, "serve", 5) != 0) continue;
            double t1 = now(), deadline = t1 + opt.timeout;
            round++;
            long target = 0;
            for (int i = 0; i < nconns; i++)
                if (conns[i].fd >= 0) {
                    target++;
                    queue_requests(&conns[i], 1);
                    flush_out(&conns[i]);
                }
            long served;
            for (;;) {
                served = 0;
                for (int i = 0; i < nconns; i++)
                    if (conns[i].fd >= 0 && conns[i].done >= round) served++;
                if (served >= target || now() > deadline) break;
                dispatch(10);
            }
            printf("{\"phase\": \"served\", \"asked\": %ld, \"served\": %ld, \"seconds\": %.3f, ", target, served, now() - t1);
            print_common(stdout);
            printf("}\n");
            fflush(stdout);
        }
        return 0;
    }

    /* Idle connections first: served once, then silent for the whole run. */
    if (opt.idle > 0) {
        for (int i = opt.clients; i < nconns; i++) conns[i].idle = 1;
        long served = open_and_serve_once(opt.clients, opt.idle, t0 + opt.timeout);
        if (served < opt.idle) {
            printf("{\"mode\": \"setup\", \"idle_served\": %ld, \"idle\": %d, \"requests\": 0, \"seconds\": 0, ",
                   served, opt.idle);
            print_common(stdout);
            printf("}\n");
            return 1;
        }
    }

    for (int i = 0; i < opt.clients; i++) start_connect(&conns[i], i);
    /* The warm-up starts once every client is connected (a server with a
     * short listen backlog may take a while to accept them all). */
    double start = now(), warm_end = 0, end = 0;
    double m_t0 = 0, m_self0 = 0, su0 = -1, ss0 = -1, su1 = -1, ss1 = -1, sf0 = -1, sf1 = -1;
    double sched_t0 = 0, next_due = 0;
    long sent = 0;
    int next_conn = 0;
    for (;;) {
        double t = now();
        if (warm_end == 0 && active_opened >= opt.clients) {
            warm_end = t + opt.warmup;
            end = warm_end + opt.duration;
            sched_t0 = t;
        }
        if (!measuring && warm_end > 0 && t >= warm_end) {
            measuring = 1;
            m_t0 = now();
            m_self0 = self_cpu();
            server_cpu(&su0, &ss0, &sf0);
        }
        if (measuring && t >= end) break;
        if (errors && opt.mode != M_CONN) break;
        if (opt.mode == M_CONN && errors > 100) break;
        if (t - start > opt.timeout) {
            note_error("timed out after %.1f s (%ld of %d clients connected)", t - start, active_opened, opt.clients);
            break;
        }
        double until = (warm_end == 0 ? 0.05 : (measuring ? end : warm_end) - t);
        if (opt.rate > 0 && warm_end > 0) {
            next_due = send_due(sched_t0, &sent, &next_conn);
            if (next_due - t < until) until = next_due - now();
            if (until < 0) until = 0;
        }
        dispatch_for(until > 0.05 ? 0.05 : (opt.rate > 0 ? until : until + 0.001));
    }
    double secs = measuring ? now() - m_t0 : 0;
    double self = measuring ? self_cpu() - m_self0 : 0;
    server_cpu(&su1, &ss1, &sf1);
    int known = measuring && su0 >= 0 && su1 >= 0;
    double user = known ? su1 - su0 : -1, sys = known ? ss1 - ss0 : -1;
    stopping = 1;
    const char *names[] = {"echo", "json", "conn", "hold"};
    printf("{\"mode\": \"%s\", \"clients\": %d, \"depth\": %d, \"size\": %d, \"idle\": %d, "
           "\"requests\": %ld, \"seconds\": %.6f, \"rate\": %.1f, \"loadgen_cpu\": %.4f, "
           "\"server_cpu\": %.4f, \"server_user\": %.4f, \"server_sys\": %.4f, \"request_bytes\": %ld, "
           "\"offered_rate\": %.1f, \"server_minflt\": %.0f, ",
           names[opt.mode], opt.clients, opt.depth, opt.size, opt.idle, total_done, secs,
           secs > 0 ? total_done / secs : 0.0, self, known ? user + sys : -1.0, user, sys, req_len, opt.rate,
           known ? sf1 - sf0 : -1.0);
    if (opt.rate > 0)
        printf("\"latency_p50_us\": %.0f, \"latency_p99_us\": %.0f, \"latency_max_us\": %.0f, ",
               latency_quantile(0.50) * 1e6, latency_quantile(0.99) * 1e6, lat_max * 1e6);
    print_common(stdout);
    printf("}\n");
    return errors && opt.mode != M_CONN ? 1 : 0;
}
