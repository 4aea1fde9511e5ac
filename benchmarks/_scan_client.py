"""The C reference of the scan rows, kept as a string (the repository commits no ``.c`` file).

``benchmarks.bench_scan.build_c_client`` writes it to a temporary directory and compiles it.
"""

SOURCE = r"""/* The C reference of the scan rows: a minimal client sending SCAN cursor COUNT n one after another.
 *
 * Built by benchmarks/bench_scan.py at run time (cc -O2), with plain sockets, no hiredis:
 *
 *     scan_client SOCKET_PATH COUNT ROUNDS
 *
 * Each round connects to the unix socket, then sends "SCAN cursor COUNT n", waits for the whole
 * reply, reads the cursor, counts the keys (walking the bulk strings without copying them) and
 * sends the next SCAN, until the cursor is 0. It prints one line per round on stdout,
 * "KEYS SECONDS", timed from the first SCAN to the end of the last reply.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/un.h>

static char *buffer;
static size_t capacity = 1 << 20;

static void die(const char *what) {
    perror(what);
    exit(2);
}

/* Parse "<digits>\r\n" at *p (before end); return -2 if incomplete. */
static long long number(const char **p, const char *end) {
    long long value = 0;
    int negative = 0;
    const char *q = *p;
    if (q < end && *q == '-') {
        negative = 1;
        q++;
    }
    while (q < end && *q >= '0' && *q <= '9')
        value = value * 10 + (*q++ - '0');
    if (q + 1 >= end)
        return -2;
    if (q[0] != '\r' || q[1] != '\n') {
        fprintf(stderr, "bad reply\n");
        exit(3);
    }
    *p = q + 2;
    return negative ? -value : value;
}

/* Parse a whole SCAN reply in [start, end): return its length, or -1 if incomplete. */
static long reply(const char *start, const char *end, char *cursor, long *keys) {
    const char *p = start;
    long long n, i, length;
    if (p >= end)
        return -1;
    if (*p == '-') {
        fprintf(stderr, "error reply: %.*s\n", (int)(end - p), p);
        exit(3);
    }
    p++; /* '*' */
    if (number(&p, end) != 2)
        return -1;
    if (p >= end)
        return -1;
    p++; /* '$' */
    length = number(&p, end);
    if (length < 0 || p + length + 2 > end)
        return -1;
    memcpy(cursor, p, length);
    cursor[length] = 0;
    p += length + 2;
    if (p >= end)
        return -1;
    p++; /* '*' */
    n = number(&p, end);
    if (n < 0)
        return -1;
    for (i = 0; i < n; i++) {
        if (p >= end)
            return -1;
        p++; /* '$' */
        length = number(&p, end);
        if (length < 0 || p + length + 2 > end)
            return -1;
        p += length + 2;
    }
    *keys += n;
    return p - start;
}

static void send_all(int fd, const char *data, size_t size) {
    while (size) {
        ssize_t sent = write(fd, data, size);
        if (sent < 0)
            die("write");
        data += sent;
        size -= sent;
    }
}

int main(int argc, char **argv) {
    struct sockaddr_un address;
    char command[256], cursor[32], count_text[32];
    int rounds, round;
    if (argc != 4) {
        fprintf(stderr, "usage: %s SOCKET_PATH COUNT ROUNDS\n", argv[0]);
        return 1;
    }
    snprintf(count_text, sizeof count_text, "%s", argv[2]);
    rounds = atoi(argv[3]);
    buffer = malloc(capacity);
    for (round = 0; round < rounds; round++) {
        int fd = socket(AF_UNIX, SOCK_STREAM, 0);
        struct timespec t0, t1;
        long keys = 0;
        if (fd < 0)
            die("socket");
        memset(&address, 0, sizeof address);
        address.sun_family = AF_UNIX;
        strncpy(address.sun_path, argv[1], sizeof address.sun_path - 1);
        if (connect(fd, (struct sockaddr *)&address, sizeof address) < 0)
            die("connect");
        strcpy(cursor, "0");
        clock_gettime(CLOCK_MONOTONIC, &t0);
        do {
            size_t used = 0;
            long size = -1;
            int length = snprintf(command, sizeof command,
                                  "*4\r\n$4\r\nSCAN\r\n$%zu\r\n%s\r\n$5\r\nCOUNT\r\n$%zu\r\n%s\r\n",
                                  strlen(cursor), cursor, strlen(count_text), count_text);
            send_all(fd, command, length);
            while (size < 0) {
                ssize_t got;
                if (used == capacity) {
                    capacity *= 2;
                    buffer = realloc(buffer, capacity);
                }
                got = read(fd, buffer + used, capacity - used);
                if (got <= 0)
                    die("read");
                used += got;
                size = reply(buffer, buffer + used, cursor, &keys);
            }
        } while (strcmp(cursor, "0") != 0);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        close(fd);
        printf("%ld %.6f\n", keys, (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9);
        fflush(stdout);
    }
    return 0;
}
"""
