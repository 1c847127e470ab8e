/*
 * Copyright (C) The ngx_dify_status_module authors
 *
 * Unit tests of dify_gcra.c: the arithmetic, the rate grammar, the
 * reply parser on every malformed shape (a batch's groups too), and the
 * header fields.
 */


#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "dify_gcra.h"


#define T0  1700000000000000LL              /* a plausible now, in us */


typedef struct {
    redisReply    top;
    redisReply    el[7];
    redisReply   *ptr[7];
} test_reply_t;


static dify_gcra_limit_t
lim(uint64_t rate, uint64_t period, uint64_t burst)
{
    dify_gcra_limit_t  l;

    l.rate = rate;
    l.period = period;
    l.burst = burst;

    return l;
}


static dify_gcra_verdict_e
decide(int64_t *tat, int64_t now, dify_gcra_limit_t l, uint64_t cost,
    dify_gcra_result_t *res)
{
    dify_gcra_decide(tat, now, &l, cost, res);

    return res->verdict;
}


static void
reply_init(test_reply_t *r, long long v0, long long v1, long long v2,
    long long v3, long long v4, long long v5, long long v6)
{
    int        i;
    long long  v[7];

    v[0] = v0; v[1] = v1; v[2] = v2; v[3] = v3;
    v[4] = v4; v[5] = v5; v[6] = v6;

    memset(r, 0, sizeof(test_reply_t));

    r->top.type = REDIS_REPLY_ARRAY;
    r->top.elements = 7;
    r->top.element = r->ptr;

    for (i = 0; i < 7; i++) {
        r->el[i].type = REDIS_REPLY_INTEGER;
        r->el[i].integer = v[i];
        r->ptr[i] = &r->el[i];
    }
}


static void
reply_from_result(test_reply_t *r, const dify_gcra_result_t *res)
{
    reply_init(r, res->verdict, (long long) res->limit.rate,
               (long long) res->limit.period, (long long) res->limit.burst,
               (long long) res->remaining, (long long) res->reset,
               (long long) res->retry);
}


static void
expect_error(const redisReply *reply, const char *why)
{
    size_t              len;
    const char         *err;
    dify_gcra_result_t  res;

    err = NULL;
    len = 0;
    memset(&res, 0x5a, sizeof(res));

    if (dify_gcra_parse_reply(reply, &res, &err, &len) != DIFY_REPLY_ERROR) {
        fail_msg("accepted: %s", why);
    }

    assert_non_null(err);
    assert_true(len > 0);

    /* err/err_len may be NULL */
    assert_int_equal(dify_gcra_parse_reply(reply, &res, NULL, NULL),
                     DIFY_REPLY_ERROR);
}


/* arithmetic */


static void
test_interval(void **state)
{
    dify_gcra_limit_t  l;

    (void) state;

    l = lim(10, 1, 5);
    assert_int_equal(dify_gcra_interval(&l), 100000);
    l = lim(100, 60, 1);
    assert_int_equal(dify_gcra_interval(&l), 600000);
    l = lim(1, 3600, 1);
    assert_int_equal(dify_gcra_interval(&l), 3600000000ULL);
    l = lim(3, 1, 1);
    assert_int_equal(dify_gcra_interval(&l), 333333);     /* floor */
    l = lim(1000000, 1, 1);
    assert_int_equal(dify_gcra_interval(&l), 1);

    /* clamped like the script's ARGV */
    l = lim(0, 1, 1);
    assert_int_equal(dify_gcra_interval(&l), 1000000);
    l = lim(UINT64_MAX, 1, 1);
    assert_int_equal(dify_gcra_interval(&l), 1);
    l = lim(1, 0, 1);
    assert_int_equal(dify_gcra_interval(&l), 1000000);
    l = lim(1, UINT64_MAX, 1);
    assert_int_equal(dify_gcra_interval(&l), 86400000000ULL);

    /* a day */
    l = lim(1, 86400, 1);
    assert_int_equal(dify_gcra_interval(&l), 86400000000ULL);
    l = lim(7, 86400, 1);
    assert_int_equal(dify_gcra_interval(&l), 12342857142ULL);  /* floor */
}


static void
test_burst_exact(void **state)
{
    int                 i;
    int64_t             tat;
    dify_gcra_limit_t   l;
    dify_gcra_result_t  res;

    (void) state;

    /* 10 r/s, burst 5: exactly 5 at t=0, one more after 100 ms */

    l = lim(10, 1, 5);
    tat = 0;

    for (i = 1; i <= 5; i++) {
        assert_int_equal(decide(&tat, T0, l, 1, &res), DIFY_GCRA_ALLOWED);
        assert_int_equal(res.remaining, 5 - i);
        assert_int_equal(res.reset, i * 100000);
        assert_int_equal(res.retry, 0);
        assert_int_equal(res.limit.rate, 10);
        assert_int_equal(res.limit.period, 1);
        assert_int_equal(res.limit.burst, 5);
        assert_int_equal(tat, T0 + i * 100000);
    }

    assert_int_equal(decide(&tat, T0, l, 1, &res), DIFY_GCRA_LIMITED);
    assert_int_equal(res.remaining, 0);
    assert_int_equal(res.reset, 500000);
    assert_int_equal(res.retry, 100000);
    assert_int_equal(tat, T0 + 500000);             /* untouched */
    assert_int_equal(dify_gcra_retry_seconds(&res), 1);

    assert_int_equal(decide(&tat, T0 + 99999, l, 1, &res),
                     DIFY_GCRA_LIMITED);
    assert_int_equal(res.retry, 1);
    assert_int_equal(res.reset, 400001);

    assert_int_equal(decide(&tat, T0 + 100000, l, 1, &res),
                     DIFY_GCRA_ALLOWED);
    assert_int_equal(res.remaining, 0);
    assert_int_equal(res.reset, 500000);

    assert_int_equal(decide(&tat, T0 + 100000, l, 1, &res),
                     DIFY_GCRA_LIMITED);
}


static void
test_refill(void **state)
{
    int                 i;
    int64_t             tat;
    dify_gcra_limit_t   l;
    dify_gcra_result_t  res;

    (void) state;

    l = lim(10, 1, 5);
    tat = 0;

    for (i = 0; i < 5; i++) {
        assert_int_equal(decide(&tat, T0, l, 1, &res), DIFY_GCRA_ALLOWED);
    }

    assert_int_equal(decide(&tat, T0, l, 1, &res), DIFY_GCRA_LIMITED);

    /* half refilled after 250 ms: 2 units */

    assert_int_equal(decide(&tat, T0 + 250000, l, 0, &res),
                     DIFY_GCRA_ALLOWED);
    assert_int_equal(res.remaining, 2);
    assert_int_equal(res.reset, 250000);

    /* full after 500 ms: 5 pass again, and not a 6th */

    for (i = 0; i < 5; i++) {
        assert_int_equal(decide(&tat, T0 + 500000, l, 1, &res),
                         DIFY_GCRA_ALLOWED);
    }

    assert_int_equal(decide(&tat, T0 + 500000, l, 1, &res),
                     DIFY_GCRA_LIMITED);

    /* long idle: still only a full bucket, never more */

    for (i = 0; i < 5; i++) {
        assert_int_equal(decide(&tat, T0 + 3600000000LL, l, 1, &res),
                         DIFY_GCRA_ALLOWED);
    }

    assert_int_equal(decide(&tat, T0 + 3600000000LL, l, 1, &res),
                     DIFY_GCRA_LIMITED);
}


static void
test_sustained(void **state)
{
    int64_t             tat, now;
    uint64_t            passed;
    dify_gcra_limit_t   l;
    dify_gcra_result_t  res;

    (void) state;

    /* hammering every ms for 1 s: burst + rate * 1 s pass */

    l = lim(10, 1, 5);
    tat = 0;
    passed = 0;

    for (now = T0; now <= T0 + 1000000; now += 1000) {
        if (decide(&tat, now, l, 1, &res) == DIFY_GCRA_ALLOWED) {
            passed++;
        }
    }

    assert_int_equal(passed, 15);

    /* one request per interval always passes, even with burst 1 */

    l = lim(100, 60, 1);
    tat = 0;

    for (now = T0; now < T0 + 60000000; now += 600000) {
        assert_int_equal(decide(&tat, now, l, 1, &res), DIFY_GCRA_ALLOWED);
        assert_int_equal(res.remaining, 0);
    }

    /* one per interval minus 1 us fails at once with burst 1 */

    assert_int_equal(decide(&tat, now - 1, l, 1, &res), DIFY_GCRA_LIMITED);
    assert_int_equal(res.retry, 1);
}


static void
test_cost(void **state)
{
    int64_t             tat;
    dify_gcra_limit_t   l;
    dify_gcra_result_t  res;

    (void) state;

    l = lim(10, 1, 5);
    tat = 0;

    assert_int_equal(decide(&tat, T0, l, 3, &res), DIFY_GCRA_ALLOWED);
    assert_int_equal(res.remaining, 2);
    assert_int_equal(res.reset, 300000);

    /* 3 more do not fit: 3 T + 3 T - 5 T */

    assert_int_equal(decide(&tat, T0, l, 3, &res), DIFY_GCRA_LIMITED);
    assert_int_equal(res.remaining, 2);
    assert_int_equal(res.retry, 100000);
    assert_int_equal(tat, T0 + 300000);

    assert_int_equal(decide(&tat, T0, l, 2, &res), DIFY_GCRA_ALLOWED);
    assert_int_equal(res.remaining, 0);

    /* a whole bucket at once: cost == burst */

    tat = 0;
    assert_int_equal(decide(&tat, T0, l, 5, &res), DIFY_GCRA_ALLOWED);
    assert_int_equal(res.remaining, 0);
    assert_int_equal(res.reset, 500000);

    /* cost 0 passes, changes nothing */

    assert_int_equal(decide(&tat, T0, l, 0, &res), DIFY_GCRA_ALLOWED);
    assert_int_equal(tat, T0 + 500000);
    assert_int_equal(res.remaining, 0);

    tat = 0;
    assert_int_equal(decide(&tat, T0, l, 0, &res), DIFY_GCRA_ALLOWED);
    assert_int_equal(tat, T0);
    assert_int_equal(res.remaining, 5);
    assert_int_equal(res.reset, 0);
}


static void
test_never(void **state)
{
    int64_t             tat;
    dify_gcra_limit_t   l;
    dify_gcra_result_t  res;

    (void) state;

    l = lim(10, 1, 5);
    tat = 0;

    assert_int_equal(decide(&tat, T0, l, 6, &res), DIFY_GCRA_NEVER);
    assert_int_equal(tat, 0);
    assert_int_equal(res.remaining, 5);
    assert_int_equal(res.reset, 0);
    assert_int_equal(res.retry, 0);

    assert_int_equal(decide(&tat, T0, l, 2, &res), DIFY_GCRA_ALLOWED);

    /* the state is reported, not touched */

    assert_int_equal(decide(&tat, T0, l, UINT64_MAX, &res),
                     DIFY_GCRA_NEVER);
    assert_int_equal(tat, T0 + 200000);
    assert_int_equal(res.remaining, 3);
    assert_int_equal(res.reset, 200000);
    assert_int_equal(res.retry, 0);
    assert_int_equal(dify_gcra_retry_seconds(&res), 1);
}


static void
test_foreign_state(void **state)
{
    int64_t             tat;
    dify_gcra_limit_t   l;
    dify_gcra_result_t  res;

    (void) state;

    l = lim(10, 1, 5);

    /* a TAT far ahead (clock stepped back, limit lowered): one bucket */

    tat = T0 + 3600000000LL;
    assert_int_equal(decide(&tat, T0, l, 2, &res), DIFY_GCRA_LIMITED);
    assert_int_equal(res.reset, 500000);
    assert_int_equal(res.remaining, 0);
    assert_int_equal(res.retry, 200000);
    assert_int_equal(tat, T0 + 3600000000LL);

    assert_int_equal(decide(&tat, T0 + 100000, l, 0, &res),
                     DIFY_GCRA_ALLOWED);
    assert_int_equal(tat, T0 + 600000);             /* capped, written */

    tat = INT64_MAX;
    assert_int_equal(decide(&tat, INT64_MIN, l, 1, &res),
                     DIFY_GCRA_LIMITED);
    assert_int_equal(res.reset, 500000);

    /* in the past, negative: a full bucket */

    tat = T0 - 1;
    assert_int_equal(decide(&tat, T0, l, 1, &res), DIFY_GCRA_ALLOWED);
    assert_int_equal(res.remaining, 4);

    tat = INT64_MIN;
    assert_int_equal(decide(&tat, T0, l, 5, &res), DIFY_GCRA_ALLOWED);
    assert_int_equal(res.remaining, 0);
    assert_int_equal(tat, T0 + 500000);
}


static void
test_extremes(void **state)
{
    int64_t             tat;
    dify_gcra_limit_t   l;
    dify_gcra_result_t  res;

    (void) state;

    /* the largest tolerance: 1e6 units of 1 per hour */

    l = lim(1, 3600, 1000000);
    tat = 0;
    assert_int_equal(decide(&tat, T0, l, 1000000, &res), DIFY_GCRA_ALLOWED);
    assert_int_equal(res.reset, 3600000000000000ULL);
    assert_int_equal(res.remaining, 0);
    assert_int_equal(decide(&tat, T0, l, 1, &res), DIFY_GCRA_LIMITED);
    assert_int_equal(res.retry, 3600000000ULL);

    /* the shortest interval: 1 us */

    l = lim(1000000, 1, 1);
    tat = 0;
    assert_int_equal(decide(&tat, T0, l, 1, &res), DIFY_GCRA_ALLOWED);
    assert_int_equal(decide(&tat, T0, l, 1, &res), DIFY_GCRA_LIMITED);
    assert_int_equal(res.retry, 1);
    assert_int_equal(decide(&tat, T0 + 1, l, 1, &res), DIFY_GCRA_ALLOWED);

    /* limits out of range are clamped */

    l = lim(0, 0, 0);
    tat = 0;
    assert_int_equal(decide(&tat, T0, l, 1, &res), DIFY_GCRA_ALLOWED);
    assert_int_equal(res.limit.rate, 1);
    assert_int_equal(res.limit.period, 1);
    assert_int_equal(res.limit.burst, 1);

    l = lim(UINT64_MAX, UINT64_MAX, UINT64_MAX);
    assert_int_equal(decide(&tat, T0, l, 1, &res), DIFY_GCRA_ALLOWED);
    assert_int_equal(res.limit.rate, 1000000);
    assert_int_equal(res.limit.period, 86400);
    assert_int_equal(res.limit.burst, 1000000);

    /*
     * r/d at the caps: 1 r/d (T = 8.64e10 us), the burst capped so that
     * tol <= 3.6e15 (41666 units: 3.5999e15 us), every value below 2^53
     */

    l = lim(1, 86400, 1000000);
    tat = 0;
    assert_int_equal(decide(&tat, T0, l, 41666, &res), DIFY_GCRA_ALLOWED);
    assert_int_equal(res.limit.burst, 41666);
    assert_int_equal(res.reset, 41666ULL * 86400000000ULL);
    assert_int_equal(res.remaining, 0);
    assert_int_equal(tat, T0 + (int64_t) (41666ULL * 86400000000ULL));
    assert_int_equal(decide(&tat, T0, l, 41666, &res), DIFY_GCRA_LIMITED);
    assert_int_equal(res.retry, 41666ULL * 86400000000ULL);
    assert_true(res.reset + 41666ULL * 86400000000ULL < (1ULL << 53));
    assert_int_equal(decide(&tat, T0, l, 41667, &res), DIFY_GCRA_NEVER);

    /* a second later: still nothing; a day later: one unit */

    assert_int_equal(decide(&tat, T0 + 1000000, l, 1, &res),
                     DIFY_GCRA_LIMITED);
    assert_int_equal(res.retry, 86400000000ULL - 1000000);
    assert_int_equal(decide(&tat, T0 + 86400000000LL, l, 1, &res),
                     DIFY_GCRA_ALLOWED);
    assert_int_equal(res.remaining, 0);

    /* 1e6 r/d: T = 86400 us, burst 1e6 */

    l = lim(1000000, 86400, 1000000);
    tat = 0;
    assert_int_equal(decide(&tat, T0, l, 1000000, &res), DIFY_GCRA_ALLOWED);
    assert_int_equal(res.reset, 86400000000ULL);
    assert_int_equal(res.limit.burst, 1000000);
}


/* the units owed survive a change of the interval */

static void
test_units_kept(void **state)
{
    dify_gcra_state_t   st[2];
    dify_gcra_limit_t   l[2];
    dify_gcra_result_t  res[2];
    uint64_t            costs[2];

    (void) state;

    /* 4 of 10 spent at 10 r/h (T = 360 s) */

    l[0] = lim(10, 3600, 10);
    st[0].tat = 0;
    st[0].interval = 0;
    costs[0] = 4;
    assert_int_equal(dify_gcra_decide_all(st, T0, l, costs, 1, 0, res), 1);
    assert_int_equal(st[0].interval, 360000000ULL);
    assert_int_equal(res[0].remaining, 6);

    /* then 100 r/h burst 10 (T = 36 s): still 6 left, not 10 */

    l[0] = lim(100, 3600, 10);
    assert_int_equal(dify_gcra_owed(&st[0], T0 + 1000, &l[0]),
                     4 * 36000000ULL);
    costs[0] = 0;
    assert_int_equal(dify_gcra_decide_all(st, T0 + 1000, l, costs, 1, 0,
                                          res), 1);
    assert_int_equal(res[0].remaining, 6);
    assert_int_equal(st[0].interval, 36000000ULL);

    /* the unit being refilled counts whole: 3.5 units owed -> 4 */

    st[0].tat = T0 + 1260000000LL;          /* 3.5 * 360 s */
    st[0].interval = 360000000ULL;
    assert_int_equal(dify_gcra_owed(&st[0], T0, &l[0]), 4 * 36000000ULL);

    /* more units than the new burst: the bucket is empty, no more */

    l[0] = lim(1, 86400, 2);
    assert_int_equal(dify_gcra_owed(&st[0], T0, &l[0]),
                     2 * 86400000000ULL);

    /* the same interval: time, as always */

    l[0] = lim(10, 3600, 10);
    assert_int_equal(dify_gcra_owed(&st[0], T0, &l[0]), 1260000000ULL);

    /* two limits, one refuses: neither is charged */

    l[0] = lim(10, 1, 10);
    l[1] = lim(2, 60, 2);
    st[0].tat = 0;
    st[0].interval = 0;
    st[1].tat = T0 + 60000000LL;            /* 2 of 2 spent */
    st[1].interval = 30000000ULL;
    costs[0] = 1;
    costs[1] = 1;
    assert_int_equal(dify_gcra_decide_all(st, T0, l, costs, 2, 0, res), 0);
    assert_int_equal(res[0].verdict, DIFY_GCRA_ALLOWED);
    assert_int_equal(res[0].remaining, 10);
    assert_int_equal(res[1].verdict, DIFY_GCRA_LIMITED);
    assert_int_equal(st[0].tat, 0);
    assert_int_equal(st[1].tat, T0 + 60000000LL);
    assert_int_equal(dify_gcra_charged(res, 2), 0);

    /* blocked: every limit, no state */

    assert_int_equal(dify_gcra_decide_all(st, T0, l, costs, 2, 1, res), 0);
    assert_int_equal(res[0].verdict, DIFY_GCRA_BLOCKED);
    assert_int_equal(res[1].verdict, DIFY_GCRA_BLOCKED);

    /* a refund gives back exactly what a charge took */

    st[0].tat = 0;
    st[0].interval = 0;
    costs[1] = 0;
    st[1].tat = 0;
    assert_int_equal(dify_gcra_decide_all(st, T0, l, costs, 2, 0, res), 1);
    assert_int_equal(st[0].tat, T0 + 100000);
    assert_int_equal(dify_gcra_refund(&st[0], T0 + 10, 1, 100000), 1);
    st[0].tat = T0 + 300000;
    st[0].interval = 100000;
    assert_int_equal(dify_gcra_refund(&st[0], T0, 2, 100000), 0);
    assert_int_equal(st[0].tat, T0 + 100000);
}


/* the rate grammar: ^(%d+) *r?/([smh])$, 1 <= N <= 1000000 */


static int
rate_ok(const char *s, uint64_t rate, uint64_t period)
{
    uint64_t  r, p;

    r = 0;
    p = 0;

    if (dify_gcra_parse_rate((const unsigned char *) s, strlen(s), &r, &p)
        != 0)
    {
        print_error("rejected: \"%s\"\n", s);
        return 0;
    }

    if (r != rate || p != period) {
        print_error("\"%s\": %llu/%llu\n", s, (unsigned long long) r,
                    (unsigned long long) p);
        return 0;
    }

    return 1;
}


static int
rate_bad(const char *s, size_t len)
{
    uint64_t  r, p;

    r = 77;
    p = 77;

    if (dify_gcra_parse_rate((const unsigned char *) s, len, &r, &p) != -1) {
        print_error("accepted: \"%.*s\"\n", (int) len, s);
        return 0;
    }

    /* nothing written on failure */
    return r == 77 && p == 77;
}


static void
test_parse_rate(void **state)
{
    size_t       i;
    const char  *bad[] = {
        "", "r/s", "/s", "10", "10r", "10r/", "10/", "10r/x", "10r/S",
        "10R/s", "10 r/ s", "10 r /s", "10r /s", " 10r/s", "10r/s ",
        "10r/s\n", "\t10r/s", "10\tr/s", "10rr/s", "10r/ss", "10r/sm",
        "0r/s", "0/m", "00/h", "1000001r/s", "99999999999999999999999r/s",
        "18446744073709551617r/s", "-1r/s", "+1r/s", "1.5r/s", "1e3r/s",
        "0x10r/s", "10/D", "10r/dd", "10 /", "10 r", "10r//s", "r10/s",
        "10r/m/", "1 0r/s", "１0r/s"
    };

    (void) state;

    assert_true(rate_ok("100r/m", 100, 60));
    assert_true(rate_ok("100 r/m", 100, 60));
    assert_true(rate_ok("100/m", 100, 60));
    assert_true(rate_ok("100 /m", 100, 60));
    assert_true(rate_ok("100   r/m", 100, 60));
    assert_true(rate_ok("5r/s", 5, 1));
    assert_true(rate_ok("7/h", 7, 3600));
    assert_true(rate_ok("1r/s", 1, 1));
    assert_true(rate_ok("1000000r/s", 1000000, 1));
    assert_true(rate_ok("0001000000r/h", 1000000, 3600));
    assert_true(rate_ok("0010/s", 10, 1));
    assert_true(rate_ok("10/d", 10, 86400));
    assert_true(rate_ok("10000 r/d", 10000, 86400));

    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_true(rate_bad(bad[i], strlen(bad[i])));
    }

    /* length, not NUL, ends the input */

    assert_true(rate_bad("10r/s", 4));
    assert_true(rate_bad("10\0r/s", 6));
    assert_true(rate_bad("10r/s\0", 6));
    assert_true(rate_bad(NULL, 0));
    assert_true(rate_bad("5", 0));
}


/* the reply parser */


static void
test_parse_reply_ok(void **state)
{
    int64_t             tat;
    uint64_t            cost;
    test_reply_t        r;
    dify_gcra_limit_t   l;
    dify_gcra_result_t  res, got;

    (void) state;

    /* every result decide() produces parses back to itself */

    l = lim(10, 1, 5);
    tat = 0;

    for (cost = 0; cost < 20; cost++) {
        decide(&tat, T0 + (int64_t) cost * 37000, l, cost % 7, &res);

        reply_from_result(&r, &res);
        memset(&got, 0, sizeof(got));

        assert_int_equal(dify_gcra_parse_reply(&r.top, &got, NULL, NULL),
                         DIFY_REPLY_OK);
        assert_int_equal(got.verdict, res.verdict);
        assert_int_equal(got.limit.rate, res.limit.rate);
        assert_int_equal(got.limit.period, res.limit.period);
        assert_int_equal(got.limit.burst, res.limit.burst);
        assert_int_equal(got.remaining, res.remaining);
        assert_int_equal(got.reset, res.reset);
        assert_int_equal(got.retry, res.retry);
    }

    /* the shapes the script sends */

    reply_init(&r, 1, 10, 1, 5, 4, 100000, 0);
    assert_int_equal(dify_gcra_parse_reply(&r.top, &got, NULL, NULL),
                     DIFY_REPLY_OK);
    assert_int_equal(got.verdict, DIFY_GCRA_ALLOWED);

    reply_init(&r, 0, 10, 1, 5, 0, 482632, 82632);
    assert_int_equal(dify_gcra_parse_reply(&r.top, &got, NULL, NULL),
                     DIFY_REPLY_OK);
    assert_int_equal(got.verdict, DIFY_GCRA_LIMITED);
    assert_int_equal(got.retry, 82632);

    reply_init(&r, -1, 100, 60, 3, 0, 0, 0);
    assert_int_equal(dify_gcra_parse_reply(&r.top, &got, NULL, NULL),
                     DIFY_REPLY_OK);
    assert_int_equal(got.verdict, DIFY_GCRA_BLOCKED);
    assert_int_equal(got.limit.rate, 100);
    assert_int_equal(got.limit.period, 60);
    assert_int_equal(got.limit.burst, 3);

    reply_init(&r, -2, 10, 1, 5, 5, 0, 0);
    assert_int_equal(dify_gcra_parse_reply(&r.top, &got, NULL, NULL),
                     DIFY_REPLY_OK);
    assert_int_equal(got.verdict, DIFY_GCRA_NEVER);

    /* limited with each possible cost: r < c <= burst */

    reply_init(&r, 0, 10, 1, 5, 2, 300000, 100000);     /* c = 3 */
    assert_int_equal(dify_gcra_parse_reply(&r.top, &got, NULL, NULL),
                     DIFY_REPLY_OK);
    reply_init(&r, 0, 10, 1, 5, 2, 300000, 300000);     /* c = 5 */
    assert_int_equal(dify_gcra_parse_reply(&r.top, &got, NULL, NULL),
                     DIFY_REPLY_OK);

    /* the extremes */

    reply_init(&r, 0, 1, 3600, 1000000, 0, 3600000000000000LL,
               3600000000000000LL);
    assert_int_equal(dify_gcra_parse_reply(&r.top, &got, NULL, NULL),
                     DIFY_REPLY_OK);

    reply_init(&r, 1, 1000000, 1, 1, 1, 0, 0);
    assert_int_equal(dify_gcra_parse_reply(&r.top, &got, NULL, NULL),
                     DIFY_REPLY_OK);
}


static void
test_parse_reply_errors(void **state)
{
    size_t              len;
    const char         *err;
    redisReply          e;
    dify_gcra_result_t  res;
    char                noscript[] = "NOSCRIPT No matching script. "
                                     "Please use EVAL.";
    char                other[] = "ERR dify_gcra: bad arguments";
    char                short_[] = "NOSCRIP";

    (void) state;

    memset(&e, 0, sizeof(e));
    e.type = REDIS_REPLY_ERROR;

    e.str = noscript;
    e.len = strlen(noscript);
    err = NULL;
    len = 0;
    assert_int_equal(dify_gcra_parse_reply(&e, &res, &err, &len),
                     DIFY_REPLY_NOSCRIPT);
    assert_ptr_equal(err, noscript);
    assert_int_equal(len, e.len);
    assert_int_equal(dify_gcra_parse_reply(&e, &res, NULL, NULL),
                     DIFY_REPLY_NOSCRIPT);

    /* exactly "NOSCRIPT" */
    e.len = 8;
    assert_int_equal(dify_gcra_parse_reply(&e, &res, NULL, NULL),
                     DIFY_REPLY_NOSCRIPT);

    e.str = other;
    e.len = strlen(other);
    assert_int_equal(dify_gcra_parse_reply(&e, &res, &err, &len),
                     DIFY_REPLY_ERROR);
    assert_ptr_equal(err, other);           /* the reply's own text */
    assert_int_equal(len, e.len);

    e.str = short_;
    e.len = strlen(short_);
    assert_int_equal(dify_gcra_parse_reply(&e, &res, NULL, NULL),
                     DIFY_REPLY_ERROR);

    e.str = noscript;
    e.len = 0;
    assert_int_equal(dify_gcra_parse_reply(&e, &res, &err, &len),
                     DIFY_REPLY_ERROR);

    e.str = NULL;
    e.len = 5;
    expect_error(&e, "error without a message");

    expect_error(NULL, "no reply");
}


static void
test_parse_reply_shapes(void **state)
{
    int           i, t;
    char          one[] = "1";
    test_reply_t  r;
    redisReply    x, inner, *in[1];
    const int     types[] = {
        REDIS_REPLY_STRING, REDIS_REPLY_ARRAY, REDIS_REPLY_NIL,
        REDIS_REPLY_STATUS, REDIS_REPLY_ERROR, 0, 7, -1
    };

    (void) state;

    /* not an array */

    memset(&x, 0, sizeof(x));
    x.str = one;
    x.len = 1;
    x.integer = 1;

    for (t = 0; t < (int) (sizeof(types) / sizeof(types[0])); t++) {
        if (types[t] == REDIS_REPLY_ARRAY || types[t] == REDIS_REPLY_ERROR) {
            continue;
        }

        x.type = types[t];
        expect_error(&x, "not an array");
    }

    x.type = REDIS_REPLY_INTEGER;
    expect_error(&x, "an integer");

    /* arrays of the wrong size, or without their vector */

    reply_init(&r, 1, 10, 1, 5, 4, 100000, 0);

    for (i = 0; i < 16; i++) {
        if (i == 7) {
            continue;
        }

        r.top.elements = (size_t) i;
        expect_error(&r.top, "wrong size");
    }

    r.top.elements = SIZE_MAX;
    expect_error(&r.top, "SIZE_MAX elements");

    r.top.elements = 7;
    r.top.element = NULL;
    expect_error(&r.top, "no element vector");

    /* each element: NULL, or of each non-integer type, or nested */

    memset(&inner, 0, sizeof(inner));
    inner.type = REDIS_REPLY_INTEGER;
    inner.integer = 1;
    in[0] = &inner;

    for (i = 0; i < 7; i++) {
        reply_init(&r, 1, 10, 1, 5, 4, 100000, 0);
        r.ptr[i] = NULL;
        expect_error(&r.top, "NULL element");

        for (t = 0; t < (int) (sizeof(types) / sizeof(types[0])); t++) {
            reply_init(&r, 1, 10, 1, 5, 4, 100000, 0);
            r.el[i].type = types[t];
            r.el[i].str = one;
            r.el[i].len = 1;

            if (types[t] == REDIS_REPLY_ARRAY) {
                r.el[i].elements = 1;
                r.el[i].element = in;
            }

            expect_error(&r.top, "non-integer element");
        }

        /* a nested 7-int array in place of the reply */

        reply_init(&r, 1, 10, 1, 5, 4, 100000, 0);
        memset(&x, 0, sizeof(x));
        x.type = REDIS_REPLY_ARRAY;
        x.elements = 7;
        x.element = r.ptr;
        r.ptr[i] = &x;
        expect_error(&r.top, "nested array");
    }
}


static void
test_parse_reply_ranges(void **state)
{
    int           i;
    test_reply_t  r;
    long long     bad[][7] = {
        /* verdict */
        { 2, 10, 1, 5, 4, 100000, 0 },
        { -3, 10, 1, 5, 4, 100000, 0 },
        { LLONG_MAX, 10, 1, 5, 4, 100000, 0 },
        { LLONG_MIN, 10, 1, 5, 4, 100000, 0 },
        /* rate, period, burst */
        { 1, 0, 1, 5, 4, 100000, 0 },
        { 1, -10, 1, 5, 4, 100000, 0 },
        { 1, 1000001, 1, 5, 0, 5, 0 },
        { 1, LLONG_MAX, 1, 5, 0, 5, 0 },
        { 1, 10, 0, 5, 4, 100000, 0 },
        { 1, 10, -1, 5, 4, 100000, 0 },
        { 1, 10, 86401, 5, 4, 100000, 0 },
        { 1, 1, 86400, 41667, 41667, 0, 0 },        /* tol > 3.6e15 */
        { 1, 10, 1, 0, 0, 0, 0 },
        { 1, 10, 1, -5, 4, 100000, 0 },
        { 1, 10, 1, 1000001, 4, 100000, 0 },
        { 1, 10, 1, LLONG_MIN, 4, 100000, 0 },
        /* remaining, reset, retry out of range */
        { 1, 10, 1, 5, -1, 100000, 0 },
        { 1, 10, 1, 5, 6, 0, 0 },
        { 1, 10, 1, 5, LLONG_MAX, 100000, 0 },
        { 1, 10, 1, 5, 0, -1, 0 },
        { 1, 10, 1, 5, 0, 500001, 0 },
        { 1, 10, 1, 5, 0, LLONG_MIN, 0 },
        { 0, 10, 1, 5, 0, 500000, -1 },
        { 0, 10, 1, 5, 0, 500000, 500001 },
        { 0, 10, 1, 5, 0, 500000, LLONG_MAX },
        /* inconsistent: remaining != floor((tol - reset) / T) */
        { 1, 10, 1, 5, 3, 100000, 0 },
        { 1, 10, 1, 5, 5, 100000, 0 },
        { 1, 10, 1, 5, 4, 0, 0 },
        { -2, 10, 1, 5, 0, 0, 0 },
        { 0, 10, 1, 5, 5, 0, 0 },
        /* retry against verdict */
        { 1, 10, 1, 5, 4, 100000, 1 },
        { 0, 10, 1, 5, 0, 500000, 0 },
        { -2, 10, 1, 5, 5, 0, 1 },
        /* blocked with a state */
        { -1, 10, 1, 5, 5, 0, 0 },
        { -1, 10, 1, 5, 0, 1, 0 },
        { -1, 10, 1, 5, 0, 0, 1 },
        /*
         * limited, retry not reset + c * T - tol for remaining < c <=
         * burst; the first is the fuzzer's find: Retry-After 1 s with
         * a RateLimit "t" of 3600 s
         */
        { 0, 1, 3600, 1000000, 0, 3600000000000000LL, 3600 },
        { 0, 10, 1, 5, 0, 482632, 82631 },          /* not c * T */
        { 0, 10, 1, 5, 0, 482632, 82633 },
        { 0, 10, 1, 5, 0, 500000, 50000 },
        { 0, 10, 1, 5, 1, 400000, 10 },
        { 0, 10, 1, 5, 1, 400000, 500000 },         /* c == 6 > burst */
    };

    (void) state;

    for (i = 0; i < (int) (sizeof(bad) / sizeof(bad[0])); i++) {
        reply_init(&r, bad[i][0], bad[i][1], bad[i][2], bad[i][3],
                   bad[i][4], bad[i][5], bad[i][6]);
        expect_error(&r.top, "out of range or inconsistent");
    }
}


/* a batch's reply: groups side by side in one flat vector */

typedef struct {
    size_t        n;
    redisReply    el[64];
    redisReply   *ptr[64];
} test_flat_t;


static void
flat_init(test_flat_t *f)
{
    memset(f, 0, sizeof(test_flat_t));
}


/* appends integers, up to a terminating LLONG_MIN + 1 */

#define TEST_END  (LLONG_MIN + 1)

static redisReply **
flat_add(test_flat_t *f, ...)
{
    size_t      start;
    va_list     args;
    long long   v;

    start = f->n;

    va_start(args, f);

    for ( ;; ) {
        v = va_arg(args, long long);

        if (v == TEST_END) {
            break;
        }

        assert_true(f->n < 64);
        f->el[f->n].type = REDIS_REPLY_INTEGER;
        f->el[f->n].integer = v;
        f->ptr[f->n] = &f->el[f->n];
        f->n++;
    }

    va_end(args);

    return f->ptr + start;
}


static void
expect_group_error(redisReply **element, int op, size_t n, const char *why)
{
    const char          *err;
    dify_gcra_result_t   res[DIFY_GCRA_MAX_LIMITS + 1];

    err = NULL;

    if (dify_gcra_parse_group(element, op, n, res, &err)
        != DIFY_REPLY_ERROR)
    {
        fail_msg("group accepted: %s", why);
    }

    assert_non_null(err);
    assert_true(strlen(err) > 0);

    /* err may be NULL */
    assert_int_equal(dify_gcra_parse_group(element, op, n, res, NULL),
                     DIFY_REPLY_ERROR);
}


static void
test_parse_group(void **state)
{
    int                  t, op;
    size_t               i, n;
    char                 one[] = "1";
    test_flat_t          f;
    redisReply         **c1, **d2, **r1, **c2, **e;
    const char          *err;
    dify_gcra_result_t   res[DIFY_GCRA_MAX_LIMITS + 1], one_res;
    test_reply_t         r;
    const int            types[] = {
        REDIS_REPLY_STRING, REDIS_REPLY_ARRAY, REDIS_REPLY_NIL,
        REDIS_REPLY_STATUS, REDIS_REPLY_ERROR
    };
    const char           ops[] = { DIFY_GCRA_OP_CHARGE, DIFY_GCRA_OP_DEFAULT,
                                   DIFY_GCRA_OP_REFUND };

    (void) state;

    /* the widths */

    for (n = 1; n <= DIFY_GCRA_MAX_LIMITS; n++) {
        assert_int_equal(dify_gcra_reply_width(DIFY_GCRA_OP_CHARGE, n),
                         7 * n);
        assert_int_equal(dify_gcra_reply_width(DIFY_GCRA_OP_DEFAULT, n),
                         7 * n);
        assert_int_equal(dify_gcra_reply_width(DIFY_GCRA_OP_REFUND, n), 1);
    }

    /*
     * a batch "c1d2r1c2": 7 + 14 + 1 + 14 elements; the "d" limits are
     * 10 r/s burst 5 and 2 r/d burst 1 (T 43200 s), both limited
     */

    flat_init(&f);
    c1 = flat_add(&f, 1LL, 10LL, 1LL, 5LL, 4LL, 100000LL, 0LL, TEST_END);
    d2 = flat_add(&f, 0LL, 10LL, 1LL, 5LL, 2LL, 300000LL, 100000LL,
                  0LL, 2LL, 86400LL, 1LL, 0LL, 43200000000LL, 43200000000LL,
                  TEST_END);
    r1 = flat_add(&f, 2LL, TEST_END);
    c2 = flat_add(&f, -1LL, 7LL, 60LL, 9LL, 0LL, 0LL, 0LL,
                  -1LL, 10LL, 1LL, 5LL, 0LL, 0LL, 0LL, TEST_END);
    assert_int_equal(f.n, 36);

    err = NULL;
    assert_int_equal(dify_gcra_parse_group(c1, DIFY_GCRA_OP_CHARGE, 1, res,
                                           &err), DIFY_REPLY_OK);
    assert_null(err);
    assert_int_equal(res[0].verdict, DIFY_GCRA_ALLOWED);
    assert_int_equal(res[0].limit.rate, 10);
    assert_int_equal(res[0].limit.period, 1);
    assert_int_equal(res[0].limit.burst, 5);
    assert_int_equal(res[0].remaining, 4);
    assert_int_equal(res[0].reset, 100000);
    assert_int_equal(res[0].retry, 0);

    /* a "c" group is what dify_gcra_parse_reply() reads */

    reply_init(&r, 1, 10, 1, 5, 4, 100000, 0);
    assert_int_equal(dify_gcra_parse_reply(&r.top, &one_res, NULL, NULL),
                     DIFY_REPLY_OK);
    assert_int_equal(one_res.verdict, res[0].verdict);
    assert_int_equal(one_res.limit.rate, res[0].limit.rate);
    assert_int_equal(one_res.limit.period, res[0].limit.period);
    assert_int_equal(one_res.limit.burst, res[0].limit.burst);
    assert_int_equal(one_res.remaining, res[0].remaining);
    assert_int_equal(one_res.reset, res[0].reset);
    assert_int_equal(one_res.retry, res[0].retry);

    assert_int_equal(dify_gcra_parse_group(d2, DIFY_GCRA_OP_DEFAULT, 2, res,
                                           NULL), DIFY_REPLY_OK);
    assert_int_equal(res[0].verdict, DIFY_GCRA_LIMITED);
    assert_int_equal(res[0].limit.rate, 10);
    assert_int_equal(res[0].limit.burst, 5);
    assert_int_equal(res[0].remaining, 2);
    assert_int_equal(res[0].retry, 100000);
    assert_int_equal(res[1].verdict, DIFY_GCRA_LIMITED);
    assert_int_equal(res[1].limit.period, 86400);
    assert_int_equal(res[1].reset, 43200000000ULL);

    assert_int_equal(dify_gcra_parse_group(r1, DIFY_GCRA_OP_REFUND, 2, res,
                                           NULL), DIFY_REPLY_OK);

    assert_int_equal(dify_gcra_parse_group(c2, DIFY_GCRA_OP_CHARGE, 2, res,
                                           NULL), DIFY_REPLY_OK);
    assert_int_equal(res[0].verdict, DIFY_GCRA_BLOCKED);
    assert_int_equal(res[0].limit.rate, 7);
    assert_int_equal(res[1].verdict, DIFY_GCRA_BLOCKED);

    /* "d" is blocked by an override as "c" is */

    assert_int_equal(dify_gcra_parse_group(c2, DIFY_GCRA_OP_DEFAULT, 2, res,
                                           NULL), DIFY_REPLY_OK);
    assert_int_equal(res[1].verdict, DIFY_GCRA_BLOCKED);

    /* a group reads its own width, not one element more */

    f.ptr[7] = NULL;
    assert_int_equal(dify_gcra_parse_group(c1, DIFY_GCRA_OP_CHARGE, 1, res,
                                           NULL), DIFY_REPLY_OK);
    f.ptr[7] = &f.el[7];
    f.ptr[21] = NULL;
    assert_int_equal(dify_gcra_parse_group(d2, DIFY_GCRA_OP_DEFAULT, 2, res,
                                           NULL), DIFY_REPLY_OK);
    f.ptr[21] = &f.el[21];
    f.ptr[22] = NULL;
    assert_int_equal(dify_gcra_parse_group(r1, DIFY_GCRA_OP_REFUND, 2, res,
                                           NULL), DIFY_REPLY_OK);

    /* no limit, or too many, for every op */

    flat_init(&f);

    for (i = 0; i < 64; i++) {
        (void) flat_add(&f, 0LL, TEST_END);
    }

    for (i = 0; i < sizeof(ops); i++) {
        expect_group_error(f.ptr, ops[i], 0, "n = 0");
        expect_group_error(f.ptr, ops[i], DIFY_GCRA_MAX_LIMITS + 1, "n = 9");
    }

    /* "r": a count from 0 to n, an integer */

    flat_init(&f);
    e = flat_add(&f, 0LL, TEST_END);
    assert_int_equal(dify_gcra_parse_group(e, DIFY_GCRA_OP_REFUND, 1, res,
                                           NULL), DIFY_REPLY_OK);
    f.el[0].integer = 3;
    assert_int_equal(dify_gcra_parse_group(e, DIFY_GCRA_OP_REFUND, 3, res,
                                           NULL), DIFY_REPLY_OK);
    expect_group_error(e, DIFY_GCRA_OP_REFUND, 2, "r: 3 of 2");
    f.el[0].integer = -1;
    expect_group_error(e, DIFY_GCRA_OP_REFUND, 2, "r: -1");
    f.el[0].integer = LLONG_MIN;
    expect_group_error(e, DIFY_GCRA_OP_REFUND, 2, "r: LLONG_MIN");
    f.el[0].integer = 1;

    for (t = 0; t < (int) (sizeof(types) / sizeof(types[0])); t++) {
        f.el[0].type = types[t];
        f.el[0].str = one;
        f.el[0].len = 1;
        expect_group_error(e, DIFY_GCRA_OP_REFUND, 2, "r: a type");
    }

    f.ptr[0] = NULL;
    expect_group_error(e, DIFY_GCRA_OP_REFUND, 2, "r: NULL");

    /*
     * "c" and "d": blocked for some limits only; each element of each
     * limit NULL, of another type, out of range, or inconsistent
     */

    for (i = 0; i < 2; i++) {
        op = ops[i];

        flat_init(&f);
        e = flat_add(&f, -1LL, 7LL, 60LL, 9LL, 0LL, 0LL, 0LL,
                     1LL, 10LL, 1LL, 5LL, 4LL, 100000LL, 0LL, TEST_END);
        expect_group_error(e, op, 2, "blocked 1 of 2");
        f.el[0].integer = 1;
        f.el[4].integer = 8;
        f.el[5].integer = 8571428;              /* one unit of 7 r/m */
        assert_int_equal(dify_gcra_parse_group(e, op, 2, res, NULL),
                         DIFY_REPLY_OK);

        for (n = 0; n < 14; n++) {
            f.ptr[n] = NULL;
            expect_group_error(e, op, 2, "NULL");
            f.ptr[n] = &f.el[n];

            for (t = 0; t < (int) (sizeof(types) / sizeof(types[0])); t++) {
                f.el[n].type = types[t];
                f.el[n].str = one;
                f.el[n].len = 1;
                expect_group_error(e, op, 2, "a type");
            }

            f.el[n].type = REDIS_REPLY_INTEGER;
        }

        f.el[11].integer = 3;
        expect_group_error(e, op, 2, "remaining off by 1");
        f.el[11].integer = 4;
        f.el[13].integer = 1;
        expect_group_error(e, op, 2, "allowed with a retry");
        f.el[13].integer = 0;
        f.el[7].integer = 2;
        expect_group_error(e, op, 2, "verdict 2");
        f.el[7].integer = 1;
        f.el[8].integer = 1000001;
        expect_group_error(e, op, 2, "rate out of range");
        f.el[8].integer = 10;
        assert_int_equal(dify_gcra_parse_group(e, op, 2, res, NULL),
                         DIFY_REPLY_OK);
    }
}

/* Retry-After and the header fields */


static void
test_retry_seconds(void **state)
{
    dify_gcra_result_t  res;

    (void) state;

    memset(&res, 0, sizeof(res));

    res.retry = 0;
    assert_int_equal(dify_gcra_retry_seconds(&res), 1);
    res.retry = 1;
    assert_int_equal(dify_gcra_retry_seconds(&res), 1);
    res.retry = 1000000;
    assert_int_equal(dify_gcra_retry_seconds(&res), 1);
    res.retry = 1000001;
    assert_int_equal(dify_gcra_retry_seconds(&res), 2);
    res.retry = 59999999;
    assert_int_equal(dify_gcra_retry_seconds(&res), 60);
    res.retry = UINT64_MAX;
    assert_int_equal(dify_gcra_retry_seconds(&res), 18446744073710ULL);
}


static void
test_policy_header(void **state)
{
    char               buf[128];
    size_t             n;
    dify_gcra_limit_t  l;

    (void) state;

    l = lim(10, 1, 5);                      /* 0.5 s to fill: w=1 */
    n = dify_gcra_policy_header(buf, sizeof(buf), &l);
    assert_string_equal(buf, "\"default\";q=5;w=1");
    assert_int_equal(n, strlen(buf));

    l = lim(100, 60, 100);
    dify_gcra_policy_header(buf, sizeof(buf), &l);
    assert_string_equal(buf, "\"default\";q=100;w=60");

    l = lim(100, 60, 10);
    dify_gcra_policy_header(buf, sizeof(buf), &l);
    assert_string_equal(buf, "\"default\";q=10;w=6");

    l = lim(1, 3600, 1);
    dify_gcra_policy_header(buf, sizeof(buf), &l);
    assert_string_equal(buf, "\"default\";q=1;w=3600");

    l = lim(3, 1, 4);                       /* 4 * 333333 us */
    dify_gcra_policy_header(buf, sizeof(buf), &l);
    assert_string_equal(buf, "\"default\";q=4;w=2");

    l = lim(1000000, 1, 1);                 /* 1 us: still w >= 1 */
    dify_gcra_policy_header(buf, sizeof(buf), &l);
    assert_string_equal(buf, "\"default\";q=1;w=1");

    l = lim(1, 3600, 1000000);
    dify_gcra_policy_header(buf, sizeof(buf), &l);
    assert_string_equal(buf, "\"default\";q=1000000;w=3600000000");

    /* the size includes the NUL */

    l = lim(10, 1, 5);
    n = strlen("\"default\";q=5;w=1");
    assert_int_equal(dify_gcra_policy_header(buf, n + 1, &l), n);
    assert_int_equal(dify_gcra_policy_header(buf, n, &l), 0);
    assert_int_equal(dify_gcra_policy_header(buf, 1, &l), 0);
    assert_int_equal(dify_gcra_policy_header(buf, 0, &l), 0);
    assert_int_equal(dify_gcra_policy_header(NULL, 64, &l), 0);
}


static void
test_ratelimit_header(void **state)
{
    int                 i;
    char                buf[128];
    size_t              n;
    int64_t             tat;
    dify_gcra_limit_t   l;
    dify_gcra_result_t  res;

    (void) state;

    /* 10 r/s burst 5, after one request: 4 left, the 5th back in 0.1 s */

    l = lim(10, 1, 5);
    tat = 0;
    decide(&tat, T0, l, 1, &res);
    n = dify_gcra_ratelimit_header(buf, sizeof(buf), &res);
    assert_string_equal(buf, "\"default\";r=4;t=1");
    assert_int_equal(n, strlen(buf));

    /* 1 r/m burst 2 */

    l = lim(1, 60, 2);
    tat = 0;

    decide(&tat, T0, l, 0, &res);           /* full: 2 now, a 3rd in T */
    dify_gcra_ratelimit_header(buf, sizeof(buf), &res);
    assert_string_equal(buf, "\"default\";r=2;t=60");

    decide(&tat, T0, l, 1, &res);
    dify_gcra_ratelimit_header(buf, sizeof(buf), &res);
    assert_string_equal(buf, "\"default\";r=1;t=60");

    decide(&tat, T0 + 15000000, l, 1, &res);
    dify_gcra_ratelimit_header(buf, sizeof(buf), &res);
    assert_string_equal(buf, "\"default\";r=0;t=45");

    decide(&tat, T0 + 20000000, l, 1, &res);
    assert_int_equal(res.verdict, DIFY_GCRA_LIMITED);
    dify_gcra_ratelimit_header(buf, sizeof(buf), &res);
    assert_string_equal(buf, "\"default\";r=0;t=40");
    assert_int_equal(dify_gcra_retry_seconds(&res), 40);

    /* 100 r/m burst 100 exhausted: t=1 (0.6 s), not the full minute */

    l = lim(100, 60, 100);
    tat = 0;

    for (i = 0; i < 100; i++) {
        decide(&tat, T0, l, 1, &res);
    }

    dify_gcra_ratelimit_header(buf, sizeof(buf), &res);
    assert_string_equal(buf, "\"default\";r=0;t=1");
    assert_int_equal(res.reset, 60000000);

    /* blocked: no state */

    memset(&res, 0, sizeof(res));
    res.verdict = DIFY_GCRA_BLOCKED;
    res.limit = lim(10, 1, 5);
    dify_gcra_ratelimit_header(buf, sizeof(buf), &res);
    assert_string_equal(buf, "\"default\";r=0;t=0");

    /* nonsense input is clamped, not overflowed */

    res.limit = lim(UINT64_MAX, UINT64_MAX, UINT64_MAX);
    res.remaining = UINT64_MAX;
    res.reset = UINT64_MAX;
    dify_gcra_ratelimit_header(buf, sizeof(buf), &res);
    assert_string_equal(buf, "\"default\";r=1000000;t=86401");

    /* too small */

    l = lim(10, 1, 5);
    tat = 0;
    decide(&tat, T0, l, 1, &res);
    n = strlen("\"default\";r=4;t=1");
    assert_int_equal(dify_gcra_ratelimit_header(buf, n + 1, &res), n);
    assert_int_equal(dify_gcra_ratelimit_header(buf, n, &res), 0);
    assert_int_equal(dify_gcra_ratelimit_header(buf, 0, &res), 0);
    assert_int_equal(dify_gcra_ratelimit_header(NULL, 64, &res), 0);
}


/*
 * Over random sequences: t lies in [1, ceil(T)] and, when limited,
 * never after Retry-After (draft 11, section 6); remaining never
 * exceeds burst; reset never exceeds the tolerance.
 */

static void
test_header_invariants(void **state)
{
    int                 i, k;
    char                buf[128], *p;
    int64_t             tat, now;
    uint64_t            t, tol, hr, ht, cost;
    dify_gcra_limit_t   l;
    dify_gcra_result_t  res;
    const uint64_t      rates[] = { 1, 3, 10, 100, 7, 1000000 };
    const uint64_t      periods[] = { 1, 60, 3600 };
    const uint64_t      bursts[] = { 1, 2, 5, 100, 999 };

    (void) state;

    srand(12345);

    for (k = 0; k < 200; k++) {
        l = lim(rates[rand() % 6], periods[rand() % 3], bursts[rand() % 5]);
        t = dify_gcra_interval(&l);
        tol = l.burst * t;
        tat = 0;
        now = T0;

        for (i = 0; i < 200; i++) {
            now += (int64_t) ((uint64_t) rand() % (2 * t + 1));
            cost = (uint64_t) rand() % (l.burst + 2);

            decide(&tat, now, l, cost, &res);

            assert_true(res.remaining <= l.burst);
            assert_true(res.reset <= tol);
            assert_true(dify_gcra_ratelimit_header(buf, sizeof(buf), &res)
                        > 0);

            p = strstr(buf, ";r=");
            assert_non_null(p);
            hr = strtoull(p + 3, &p, 10);
            assert_memory_equal(p, ";t=", 3);
            ht = strtoull(p + 3, NULL, 10);

            assert_int_equal(hr, res.remaining);
            assert_true(ht >= 1);
            assert_true(ht <= (t + 999999) / 1000000);

            if (res.verdict == DIFY_GCRA_LIMITED) {
                assert_true(res.retry >= 1);
                assert_true(ht <= dify_gcra_retry_seconds(&res));
                assert_true(cost > res.remaining);

            } else if (res.verdict == DIFY_GCRA_ALLOWED) {
                assert_int_equal(res.retry, 0);

            } else {
                assert_int_equal(res.verdict, DIFY_GCRA_NEVER);
                assert_true(cost > l.burst);
            }
        }
    }
}


int
main(void)
{
    const struct CMUnitTest  tests[] = {
        cmocka_unit_test(test_interval),
        cmocka_unit_test(test_burst_exact),
        cmocka_unit_test(test_refill),
        cmocka_unit_test(test_sustained),
        cmocka_unit_test(test_cost),
        cmocka_unit_test(test_never),
        cmocka_unit_test(test_foreign_state),
        cmocka_unit_test(test_extremes),
        cmocka_unit_test(test_units_kept),
        cmocka_unit_test(test_parse_rate),
        cmocka_unit_test(test_parse_reply_ok),
        cmocka_unit_test(test_parse_reply_errors),
        cmocka_unit_test(test_parse_reply_shapes),
        cmocka_unit_test(test_parse_reply_ranges),
        cmocka_unit_test(test_parse_group),
        cmocka_unit_test(test_retry_seconds),
        cmocka_unit_test(test_policy_header),
        cmocka_unit_test(test_ratelimit_header),
        cmocka_unit_test(test_header_invariants),
    };

    return cmocka_run_group_tests_name("dify_gcra", tests, NULL, NULL);
}
