// SPDX-License-Identifier: GPL-3.0-or-later
// The cheapest peer a passthrough engine can have, for scripts/bench_engines.py: a card process in C that
// answers 90 00 to every C-APDU without looking at it, so what the bench measures on its slot is our
// engine, the loopback round trip and nothing of a card.
//
//   min_peer vpcd PORT ATRHEX      vicc's side of the vpcd protocol: 2-byte length; 1-byte control
//                                  messages 0 off, 1 on, 2 reset, 4 get ATR; longer is a C-APDU
//   min_peer vscard PORT ATRHEX    a VSCard client (libcacard's vscard_common.h: 12-byte big-endian
//                                  header type, reader_id, length): Init, ReaderAdd, ATR, then APDUs
//   min_peer echo PORT             answers each 12-byte message with 12 bytes (a round-trip floor)
//   min_peer rtt PORT N            N round trips of 12 bytes to an echo peer; prints the median and
//                                  p90 in microseconds: the kernel's loopback floor, no Python
//
// Each connects to 127.0.0.1:PORT (retrying for 120 s, as the daemon may still be starting), except
// echo, which listens there.

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { VSC_INIT = 1, VSC_ERROR, VSC_READER_ADD, VSC_READER_REMOVE, VSC_ATR, VSC_CARD_REMOVE, VSC_APDU,
       VSC_FLUSH, VSC_FLUSH_COMPLETE };

static void __attribute__((noreturn)) die(const char *what) {
    perror(what);
    exit(1);
}

static void nodelay(int s) {
    int one = 1;
    if (setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0)
        die("TCP_NODELAY");
}

static struct sockaddr_in loopback(int port) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

static int connect_retry(int port) {
    struct sockaddr_in a = loopback(port);
    for (int i = 0; i < 600; i++) {
        int s = socket(AF_INET, SOCK_STREAM, 0);
        if (s < 0)
            die("socket");
        if (connect(s, (struct sockaddr *)&a, sizeof a) == 0) {
            nodelay(s);
            return s;
        }
        close(s);
        usleep(200000);
    }
    fprintf(stderr, "min_peer: nothing listens on 127.0.0.1:%d\n", port);
    exit(1);
}

// 0 at the peer's end of the stream, -1 on an error, 1 when n bytes were read.
static int read_exact(int s, uint8_t *buf, size_t n) {
    while (n) {
        ssize_t r = read(s, buf, n);
        if (r == 0)
            return 0;
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        buf += r;
        n -= (size_t)r;
    }
    return 1;
}

static void write_all(int s, const uint8_t *buf, size_t n) {
    while (n) {
        ssize_t w = write(s, buf, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            exit(0);                 // the daemon went away: the bench is over
        }
        buf += w;
        n -= (size_t)w;
    }
}

static size_t parse_hex(const char *hex, uint8_t *out, size_t max) {
    size_t n = strlen(hex) / 2;
    if (n > max || strlen(hex) % 2) {
        fprintf(stderr, "min_peer: bad ATR hex\n");
        exit(2);
    }
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        if (sscanf(hex + 2 * i, "%2x", &v) != 1) {
            fprintf(stderr, "min_peer: bad ATR hex\n");
            exit(2);
        }
        out[i] = (uint8_t)v;
    }
    return n;
}

static void be32(uint8_t *p, uint32_t v) {
    p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v;
}

static uint32_t get32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static int vpcd(int port, const uint8_t *atr, size_t atr_len) {
    int s = connect_retry(port);
    uint8_t buf[2 + 65536], out[2 + 64];
    static const uint8_t ok[] = {0x00, 0x02, 0x90, 0x00};
    for (;;) {
        if (read_exact(s, buf, 2) != 1)
            return 0;
        size_t n = (size_t)buf[0] << 8 | buf[1];
        if (read_exact(s, buf, n) != 1)
            return 0;
        if (n == 1) {
            if (buf[0] == 4) {
                out[0] = 0;
                out[1] = (uint8_t)atr_len;
                memcpy(out + 2, atr, atr_len);
                write_all(s, out, 2 + atr_len);
            }
            continue;               // power off, on, reset: no answer in the protocol
        }
        write_all(s, ok, sizeof ok);
    }
}

static void vsc_send(int s, uint32_t type, uint32_t reader, const uint8_t *payload, size_t n) {
    if (n > 256) {
        fprintf(stderr, "min_peer: a %zu-byte payload to send\n", n);
        exit(1);
    }
    uint8_t buf[12 + 256];
    be32(buf, type);
    be32(buf + 4, reader);
    be32(buf + 8, (uint32_t)n);
    if (n)
        memcpy(buf + 12, payload, n);
    write_all(s, buf, 12 + n);
}

// The next message's type; its payload read into buf (at most max bytes kept). -1 at the end.
static int vsc_recv(int s, uint8_t *buf, size_t max, uint32_t *reader) {
    uint8_t h[12];
    if (read_exact(s, h, 12) != 1)
        return -1;
    uint32_t n = get32(h + 8);
    if (n > max) {
        fprintf(stderr, "min_peer: a %u-byte VSCard message\n", n);
        exit(1);
    }
    if (read_exact(s, buf, n) != 1)
        return -1;
    *reader = get32(h + 4);
    return (int)get32(h);
}

static int vscard(int port, const uint8_t *atr, size_t atr_len) {
    int s = connect_retry(port);
    static uint8_t buf[65536];
    uint32_t reader;
    static const uint8_t init[] = {'V', 'S', 'C', 'D', 0, 0, 0, 2, 0, 0, 0, 0};   // version 0.0.2, no caps
    static const uint8_t name[] = "bench min_peer reader";
    static const uint8_t ok[] = {0x90, 0x00};
    vsc_send(s, VSC_INIT, 0, init, sizeof init);
    if (vsc_recv(s, buf, sizeof buf, &reader) != VSC_INIT)
        return 1;
    vsc_send(s, VSC_READER_ADD, 0, name, sizeof name - 1);
    if (vsc_recv(s, buf, sizeof buf, &reader) != VSC_ERROR)
        return 1;
    vsc_send(s, VSC_ATR, 0, atr, atr_len);
    for (;;) {
        int t = vsc_recv(s, buf, sizeof buf, &reader);
        if (t < 0)
            return 0;
        if (t == VSC_APDU)
            vsc_send(s, VSC_APDU, reader, ok, sizeof ok);
        else if (t == VSC_FLUSH)
            vsc_send(s, VSC_FLUSH_COMPLETE, reader, NULL, 0);
    }
}

static int echo(int port) {
    int l = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in a = loopback(port);
    if (l < 0 || setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0)
        die("socket");
    if (bind(l, (struct sockaddr *)&a, sizeof a) < 0 || listen(l, 4) < 0)
        die("bind");
    for (;;) {
        int s = accept(l, NULL, NULL);
        if (s < 0) {
            perror("accept");
            return 1;
        }
        nodelay(s);
        uint8_t buf[12];
        while (read_exact(s, buf, 12) == 1)
            write_all(s, buf, 12);
        close(s);
    }
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int rtt(int port, int n) {
    int s = connect_retry(port);
    uint8_t buf[12] = {0, 0, 0, VSC_APDU};
    double *us = calloc((size_t)n, sizeof *us);
    if (!us || n < 1)
        die("rtt");
    for (int i = 0; i < n; i++) {
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        write_all(s, buf, 12);
        if (read_exact(s, buf, 12) != 1)
            die("echo");
        clock_gettime(CLOCK_MONOTONIC, &t1);
        us[i] = (t1.tv_sec - t0.tv_sec) * 1e6 + (t1.tv_nsec - t0.tv_nsec) / 1e3;
    }
    qsort(us, (size_t)n, sizeof *us, cmp);
    printf("%.1f %.1f\n", us[n / 2], us[n * 9 / 10]);
    return 0;
}

int main(int argc, char **argv) {
    uint8_t atr[33];
    if (argc == 4 && !strcmp(argv[1], "vpcd"))
        return vpcd(atoi(argv[2]), atr, parse_hex(argv[3], atr, sizeof atr));
    if (argc == 4 && !strcmp(argv[1], "vscard"))
        return vscard(atoi(argv[2]), atr, parse_hex(argv[3], atr, sizeof atr));
    if (argc == 3 && !strcmp(argv[1], "echo"))
        return echo(atoi(argv[2]));
    if (argc == 4 && !strcmp(argv[1], "rtt"))
        return rtt(atoi(argv[2]), atoi(argv[3]));
    fprintf(stderr, "usage: min_peer vpcd|vscard PORT ATRHEX | echo PORT | rtt PORT N\n");
    return 2;
}
