/*
 * Copyright (C) The ngx_dify_status_module authors
 *
 * libFuzzer harness for dify_gcra.c.  The input is fed, as RESP bytes,
 * to a hiredis reader and every reply tree it yields goes through
 * dify_gcra_parse_reply(), and, as a batch's reply, through
 * dify_gcra_parse_group(); an accepted reply must satisfy the
 * invariants the header fields rely on, and is formatted into buffers
 * of every size.  The same bytes are also a rate string for
 * dify_gcra_parse_rate(), and, when long enough, the state and limit
 * of a dify_gcra_decide() call.
 *
 * hiredis 0.14 allocates an array's element vector from the count in
 * its header before any element arrives ("*99999999\r\n"), so inputs
 * announcing more than DIFY_FUZZ_MAX_COUNT elements or bytes are
 * skipped: that is hiredis's memory, not the code under test.
 */


#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "dify_gcra.h"


#define DIFY_FUZZ_MAX_COUNT  4096
#define DIFY_FUZZ_HDR_LEN    128

#define dify_fuzz_assert(c)                                                  \
    do {                                                                     \
        if (!(c)) {                                                          \
            __builtin_trap();                                                \
        }                                                                    \
    } while (0)


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


static int
dify_fuzz_big_count(const uint8_t *p, size_t size)
{
    size_t    i, j;
    uint64_t  n;

    for (i = 0; i < size; i++) {
        if (p[i] != '*' && p[i] != '$') {
            continue;
        }

        j = i + 1;

        if (j < size && p[j] == '-') {
            j++;
        }

        for (n = 0; j < size && p[j] >= '0' && p[j] <= '9'; j++) {
            n = n * 10 + (p[j] - '0');

            if (n > DIFY_FUZZ_MAX_COUNT) {
                return 1;
            }
        }
    }

    return 0;
}


static void
dify_fuzz_result(const dify_gcra_result_t *res)
{
    char      buf[DIFY_FUZZ_HDR_LEN];
    size_t    n, len, s;
    uint64_t  t, tol, r, w;

    t = dify_gcra_interval(&res->limit);
    tol = res->limit.burst * t;

    dify_fuzz_assert(t >= 1);
    dify_fuzz_assert(res->remaining <= res->limit.burst);
    dify_fuzz_assert(res->reset <= tol);
    dify_fuzz_assert(res->retry <= tol);
    dify_fuzz_assert(dify_gcra_retry_seconds(res) >= 1);

    if (res->verdict == DIFY_GCRA_LIMITED) {
        dify_fuzz_assert(res->retry >= 1);
    }

    len = dify_gcra_ratelimit_header(buf, sizeof(buf), res);
    dify_fuzz_assert(len > 0 && len < sizeof(buf));
    dify_fuzz_assert(strlen(buf) == len);

    r = strtoull(strstr(buf, ";r=") + 3, NULL, 10);
    w = strtoull(strstr(buf, ";t=") + 3, NULL, 10);

    dify_fuzz_assert(r == res->remaining);

    if (res->verdict != DIFY_GCRA_BLOCKED) {
        dify_fuzz_assert(w >= 1 && w <= (t + 999999) / 1000000);
    }

    /* draft 11, section 6: Retry-After not before the window's end */

    if (res->verdict == DIFY_GCRA_LIMITED) {
        dify_fuzz_assert(w <= dify_gcra_retry_seconds(res));
    }

    for (s = 0; s <= len + 1; s++) {
        n = dify_gcra_ratelimit_header(buf, s, res);
        dify_fuzz_assert(n == (s > len ? len : 0));
    }

    len = dify_gcra_policy_header(buf, sizeof(buf), &res->limit);
    dify_fuzz_assert(len > 0 && len < sizeof(buf));

    for (s = 0; s <= len + 1; s++) {
        n = dify_gcra_policy_header(buf, s, &res->limit);
        dify_fuzz_assert(n == (s > len ? len : 0));
    }
}


static void dify_fuzz_batch(void *reply, const uint8_t *data, size_t size);


static void
dify_fuzz_reply(const uint8_t *data, size_t size)
{
    int                  i;
    void                *reply;
    size_t               k, err_len;
    volatile unsigned    sum;
    const char          *err;
    redisReader         *reader;
    dify_reply_rc_e      rc;
    dify_gcra_result_t   res, res2[2];

    sum = 0;
    reader = redisReaderCreate();

    if (reader == NULL) {
        return;
    }

    if (redisReaderFeed(reader, (const char *) data, size) != REDIS_OK) {
        redisReaderFree(reader);
        return;
    }

    for (i = 0; i < 64; i++) {
        reply = NULL;

        if (redisReaderGetReply(reader, &reply) != REDIS_OK
            || reply == NULL)
        {
            break;
        }

        err = NULL;
        err_len = 0;

        rc = dify_gcra_parse_reply(reply, &res, &err, &err_len);

        if (rc == DIFY_REPLY_OK) {
            dify_fuzz_result(&res);

        } else {
            dify_fuzz_assert(rc == DIFY_REPLY_NOSCRIPT
                             || rc == DIFY_REPLY_ERROR);
            dify_fuzz_assert(err != NULL);

            /* err is readable for err_len bytes (ASan checks) */

            for (k = 0; k < err_len; k++) {
                sum += (unsigned char) err[k];
            }
        }

        /* the same reply as the answer for two limits of one key */

        if (dify_gcra_parse_replies(reply, res2, 2, &err, &err_len)
            == DIFY_REPLY_OK)
        {
            dify_fuzz_result(&res2[0]);
            dify_fuzz_result(&res2[1]);
            dify_fuzz_assert((res2[0].verdict == DIFY_GCRA_BLOCKED)
                             == (res2[1].verdict == DIFY_GCRA_BLOCKED));
        }

        dify_fuzz_batch(reply, data, size);

        freeReplyObject(reply);
    }

    redisReaderFree(reader);

    (void) sum;
}


/*
 * An array reply as a batch's: groups whose ops and sizes come from the
 * input's own bytes, each parsed from where the previous one ended, as
 * ngx_http_dify_limit_reply() walks it.
 */

static void
dify_fuzz_batch(void *reply, const uint8_t *data, size_t size)
{
    int                  op;
    size_t               i, pos, n, w, k;
    const char          *err;
    redisReply          *r;
    dify_gcra_result_t   res[DIFY_GCRA_MAX_LIMITS];
    static const char    ops[3] = { DIFY_GCRA_OP_CHARGE, DIFY_GCRA_OP_DEFAULT,
                                    DIFY_GCRA_OP_REFUND };

    r = reply;

    if (r->type != REDIS_REPLY_ARRAY || r->element == NULL) {
        return;
    }

    pos = 0;

    for (i = 0; i + 1 < size && pos < r->elements; i += 2) {
        op = ops[data[i] % 3];
        n = 1 + data[i + 1] % DIFY_GCRA_MAX_LIMITS;
        w = dify_gcra_reply_width(op, n);

        if (pos + w > r->elements) {
            break;
        }

        err = NULL;

        if (dify_gcra_parse_group(r->element + pos, op, n, res, &err)
            == DIFY_REPLY_OK)
        {
            if (op != DIFY_GCRA_OP_REFUND) {
                for (k = 0; k < n; k++) {
                    dify_fuzz_result(&res[k]);
                }
            }

        } else {
            dify_fuzz_assert(err != NULL && strlen(err) > 0);
        }

        pos += w;
    }
}


static void
dify_fuzz_rate(const uint8_t *data, size_t size)
{
    char      buf[32];
    size_t    n;
    uint64_t  rate, period, r2, p2;

    if (dify_gcra_parse_rate(data, size, &rate, &period) != 0) {
        return;
    }

    dify_fuzz_assert(rate >= 1 && rate <= 1000000);
    dify_fuzz_assert(period == 1 || period == 60 || period == 3600
                     || period == 86400);

    /* the canonical form parses back to the same limit */

    n = (size_t) snprintf(buf, sizeof(buf), "%llu r/%c",
                          (unsigned long long) rate,
                          period == 1 ? 's' : period == 60 ? 'm'
                          : period == 3600 ? 'h' : 'd');

    dify_fuzz_assert(dify_gcra_parse_rate((const unsigned char *) buf, n,
                                          &r2, &p2) == 0);
    dify_fuzz_assert(r2 == rate && p2 == period);
}


static void
dify_fuzz_decide(const uint8_t *data, size_t size)
{
    int64_t             tat, now, before;
    uint64_t            v[4], t, tol;
    dify_gcra_limit_t   limit;
    dify_gcra_result_t  res;

    if (size < 6 * 8) {
        return;
    }

    memcpy(&tat, data, 8);
    memcpy(&now, data + 8, 8);
    memcpy(v, data + 16, sizeof(v));

    limit.rate = v[0];
    limit.period = v[1];
    limit.burst = v[2];

    before = tat;

    dify_gcra_decide(&tat, now, &limit, v[3], &res);

    t = dify_gcra_interval(&res.limit);
    tol = res.limit.burst * t;

    dify_fuzz_assert(res.remaining <= res.limit.burst);
    dify_fuzz_assert(res.reset <= tol);
    dify_fuzz_assert(res.remaining == (tol - res.reset) / t);

    switch (res.verdict) {

    case DIFY_GCRA_ALLOWED:
        dify_fuzz_assert(res.retry == 0);
        dify_fuzz_assert(tat == (int64_t) ((uint64_t) now + res.reset));
        break;

    case DIFY_GCRA_LIMITED:
        dify_fuzz_assert(res.retry >= 1 && res.retry <= tol);
        dify_fuzz_assert(tat == before);
        break;

    case DIFY_GCRA_NEVER:
        dify_fuzz_assert(v[3] > res.limit.burst);
        dify_fuzz_assert(tat == before);
        break;

    default:
        dify_fuzz_assert(0);
    }

    dify_fuzz_result(&res);
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    dify_fuzz_rate(data, size);
    dify_fuzz_decide(data, size);

    if (!dify_fuzz_big_count(data, size)) {
        dify_fuzz_reply(data, size);
    }

    return 0;
}
