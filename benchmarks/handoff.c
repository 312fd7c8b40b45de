/* What it costs a batch-1 step on two threads to hand each half of the state to the other core
 * (benchmarks/RESULTS.md, "Two states of this machine"): two pinned threads, each a step doing some work,
 * waiting for the other's lines of the last step, reading them, more work, then writing its own.
 *
 *   gcc -O2 -pthread -o /tmp/handoff benchmarks/handoff.c && /tmp/handoff [lines] [work]
 *
 * 0. ping-pong:        one line's round trip between the two threads;
 * 1. flag + data:      the state's lines, then a flag line the reader waits on (as the kernel's barrier);
 * 2. + prefetchw:      the same, the writer asking for its next lines for writing right after its wait;
 * 3. tagged lines:     15 values and the step's count in each line, the reader waiting on each line's count,
 *                      two buffers by the step's parity (no flag). */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <time.h>

#define NS 100000
static int NL = 4, WORK = 100, MODE;
typedef struct { _Alignas(64) float v[16]; } line;
static line data[2][2][16]; /* [writer][parity][line] */
static struct { _Alignas(64) unsigned f; } flag[2];
static volatile float sink;

static void pin(int c) {
    cpu_set_t s;
    CPU_ZERO(&s);
    CPU_SET(c, &s);
    pthread_setaffinity_np(pthread_self(), sizeof s, &s);
}
static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}
/* a dependent chain: WORK multiply-adds, ~4 cycles each */
static inline float work(float acc) {
    for (int i = 0; i < WORK; i++) acc = acc * 0.999f + 1e-3f;
    return acc;
}

static void *run(void *arg) {
    const int me = (int)(intptr_t)arg, ot = 1 - me;
    pin(me);
    float acc = 0;
    for (unsigned s = 1; s <= NS; s++) {
        acc = work(acc); /* the thread's own half, before the wait */
        if (s > 1) {
            const unsigned p = (s - 1) & 1;
            if (MODE == 3) {
                for (int l = 0; l < NL; l++) {
                    const unsigned *tag = (const unsigned *)&data[ot][p][l].v[15];
                    while (__atomic_load_n(tag, __ATOMIC_ACQUIRE) != s - 1) __builtin_ia32_pause();
                    for (int j = 0; j < 15; j++) acc += data[ot][p][l].v[j];
                }
            } else {
                while (__atomic_load_n(&flag[ot].f, __ATOMIC_ACQUIRE) < s - 1) __builtin_ia32_pause();
                for (int l = 0; l < NL; l++)
                    for (int j = 0; j < 16; j++) acc += data[ot][p][l].v[j];
            }
        }
        if (MODE >= 2)
            for (int l = 0; l < NL; l++) __builtin_prefetch(&data[me][s & 1][l], 1, 3);
        acc = work(acc); /* the other half and the epilogue, after it */
        for (int l = 0; l < NL; l++) {
            for (int j = 0; j < 15; j++) data[me][s & 1][l].v[j] = acc + j;
            if (MODE == 3) __atomic_store_n((unsigned *)&data[me][s & 1][l].v[15], s, __ATOMIC_RELEASE);
            else data[me][s & 1][l].v[15] = acc;
        }
        if (MODE != 3) __atomic_store_n(&flag[me].f, s, __ATOMIC_RELEASE);
    }
    sink = acc;
    return 0;
}

static void *pong(void *arg) {
    (void)arg;
    pin(1);
    for (unsigned i = 1; i <= NS; i++) {
        while (__atomic_load_n(&flag[0].f, __ATOMIC_ACQUIRE) != i) __builtin_ia32_pause();
        __atomic_store_n(&flag[1].f, i, __ATOMIC_RELEASE);
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc > 1) NL = atoi(argv[1]) < 1 ? 1 : atoi(argv[1]) > 16 ? 16 : atoi(argv[1]);
    if (argc > 2) WORK = atoi(argv[2]);
    pthread_t t;
    flag[0].f = flag[1].f = 0;
    pthread_create(&t, 0, pong, 0);
    pin(0);
    double t0 = now();
    for (unsigned i = 1; i <= NS; i++) {
        __atomic_store_n(&flag[0].f, i, __ATOMIC_RELEASE);
        while (__atomic_load_n(&flag[1].f, __ATOMIC_ACQUIRE) != i) __builtin_ia32_pause();
    }
    printf("ping-pong: a round trip %.0f ns\n", (now() - t0) / NS * 1e9);
    pthread_join(t, 0);
    t0 = now();
    float a = 0;
    for (int s = 0; s < NS; s++) a = work(work(a));
    sink = a;
    printf("the work alone: %.0f ns a step\n", (now() - t0) / NS * 1e9);
    const char *names[] = {"", "flag + data", "+ prefetchw", "tagged lines"};
    for (MODE = 1; MODE <= 3; MODE++) {
        flag[0].f = flag[1].f = 0;
        for (int w = 0; w < 2; w++)
            for (int p = 0; p < 2; p++)
                for (int l = 0; l < 16; l++) data[w][p][l].v[15] = -1.0f;
        t0 = now();
        pthread_create(&t, 0, run, (void *)1);
        run((void *)0);
        pthread_join(t, 0);
        printf("%-13s %d lines each way, %d multiply-adds either side of the wait: %.0f ns a step\n", names[MODE],
               NL, WORK, (now() - t0) / NS * 1e9);
    }
    return 0;
}
