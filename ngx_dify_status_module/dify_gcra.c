/*
 * Copyright (C) The ngx_dify_status_module authors
 *
 * The rate limiter's arithmetic (GCRA), its Redis script, the parsing
 * of the script's reply and the RateLimit header fields.
 *
 * All times are integers in microseconds.  With T the interval and
 * tol = burst * T the tolerance, a key's state is its theoretical
 * arrival time (TAT); d = tat - now, capped to [0, tol], is what the
 * key owes.  A request of cost c passes iff d + c * T <= tol.
 *
 * The Lua script and dify_gcra_decide() are the same algorithm written
 * twice, and must stay so step by step: the script runs in Redis for
 * the fleet, dify_gcra_decide() on a local clock for the fallback and
 * the shadow of a key's state.  t/unit/test_gcra_redis.c runs both on
 * the same sequences and compares every field.
 *
 * Lua numbers are doubles: every value the script computes is an
 * integer below 2^53 (now ~ 1.7e15 us, tol <= 1e6 * 3.6e9 = 3.6e15),
 * so sums, differences and products are exact, and floor(a / b) of
 * such integers is exact too.  This is why rate and burst are capped.
 */


#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "dify_gcra.h"


#define DIFY_GCRA_USEC         1000000

#define DIFY_GCRA_POLICY       "\"default\""

#define DIFY_GCRA_STR(x)       DIFY_GCRA_STR_(x)
#define DIFY_GCRA_STR_(x)      #x


static void dify_gcra_normalize(const dify_gcra_limit_t *limit,
    dify_gcra_limit_t *lim);
static uint64_t dify_gcra_ceil_sec(uint64_t us);


/*
 * The script.  ARGV values out of range are clamped exactly as
 * dify_gcra_normalize() clamps them; a non-numeric ARGV is an error.
 * An override field that does not parse is ignored (the default
 * applies); the rate field follows dify_gcra_parse_rate()'s grammar.
 * An override rate brings its own burst, its number of units, as the
 * rate= of dify_status_limit does, unless the override sets burst too.
 *
 * A stored TAT that is not a number, is negative or NaN counts as
 * absent; one beyond now + tol counts as now + tol.  The state is
 * written only when the request is allowed and the key then owes
 * something, and expires when its bucket is full again: PXAT, the TAT
 * rounded up to Redis's millisecond (Redis >= 6.2).  Not PX: Redis
 * adds PX to its own clock truncated to the millisecond, so the key
 * could vanish up to 1 ms before the TAT and forgive what it owed.
 *
 * Reply: verdict, rate, period, burst, remaining, reset, retry.
 *   blocked (-1): remaining, reset and retry are 0, state not read;
 *   never (-2):   cost > burst; remaining and reset from the state,
 *                 retry 0, state untouched;
 *   limited (0):  retry = d + c * T - tol > 0, state untouched;
 *   allowed (1):  retry 0.
 * remaining = floor((tol - d') / T), reset = d', where d' is what the
 * key owes after the decision.
 */

const char  dify_gcra_script[] =
    "local max_rate = " DIFY_GCRA_STR(DIFY_GCRA_MAX_RATE) "\n"
    "local max_burst = " DIFY_GCRA_STR(DIFY_GCRA_MAX_BURST) "\n"
    "local max_period = " DIFY_GCRA_STR(DIFY_GCRA_MAX_PERIOD) "\n"
    "local function int(s)\n"
    "    if type(s) ~= 'string' or not string.find(s, '^%d+$') then\n"
    "        return nil\n"
    "    end\n"
    "    return tonumber(s)\n"
    "end\n"
    "local function clamp(v, lo, hi)\n"
    "    if v < lo then return lo end\n"
    "    if v > hi then return hi end\n"
    "    return v\n"
    "end\n"
    "local rate, period = int(ARGV[1]), int(ARGV[2])\n"
    "local burst, cost = int(ARGV[3]), int(ARGV[4])\n"
    "if not (rate and period and burst and cost) then\n"
    "    return redis.error_reply('ERR dify_gcra: bad arguments')\n"
    "end\n"
    "rate = clamp(rate, 1, max_rate)\n"
    "period = clamp(period, 1, max_period)\n"
    "burst = clamp(burst, 1, max_burst)\n"
    "local o = redis.call('HMGET', KEYS[2], 'rate', 'burst', 'blocked')\n"
    "if type(o[1]) == 'string' then\n"
    "    local n, u = string.match(o[1], '^(%d+) *r?/([smh])$')\n"
    "    if n then\n"
    "        n = tonumber(n)\n"
    "        if n >= 1 and n <= max_rate then\n"
    "            rate = n\n"
    "            period = ({s = 1, m = 60, h = 3600})[u]\n"
    "            burst = n\n"
    "        end\n"
    "    end\n"
    "end\n"
    "local b = int(o[2])\n"
    "if b and b >= 1 and b <= max_burst then\n"
    "    burst = b\n"
    "end\n"
    "if o[3] == '1' then\n"
    "    return {-1, rate, period, burst, 0, 0, 0}\n"
    "end\n"
    "local t = math.floor(period * 1000000 / rate)\n"
    "if t < 1 then t = 1 end\n"
    "local tol = burst * t\n"
    "local now = redis.call('TIME')\n"
    "now = tonumber(now[1]) * 1000000 + tonumber(now[2])\n"
    "local tat = tonumber(redis.call('GET', KEYS[1]) or '')\n"
    "local d = 0\n"
    "if tat and tat > now then\n"
    "    d = math.floor(math.min(tat - now, tol))\n"
    "end\n"
    "local v, retry = 1, 0\n"
    "if cost > burst then\n"
    "    v = -2\n"
    "else\n"
    "    local need = d + cost * t\n"
    "    if need <= tol then\n"
    "        d = need\n"
    "        if d > 0 then\n"
    "            redis.call('SET', KEYS[1], string.format('%.0f', now + d),\n"
    "                       'PXAT', math.ceil((now + d) / 1000))\n"
    "        end\n"
    "    else\n"
    "        v = 0\n"
    "        retry = need - tol\n"
    "    end\n"
    "end\n"
    "return {v, rate, period, burst, math.floor((tol - d) / t), d, retry}\n";


uint64_t
dify_gcra_interval(const dify_gcra_limit_t *limit)
{
    uint64_t           t;
    dify_gcra_limit_t  lim;

    dify_gcra_normalize(limit, &lim);

    t = lim.period * DIFY_GCRA_USEC / lim.rate;

    return t ? t : 1;
}


void
dify_gcra_decide(int64_t *tat, int64_t now, const dify_gcra_limit_t *limit,
    uint64_t cost, dify_gcra_result_t *res)
{
    uint64_t  t, tol, d, need;

    dify_gcra_normalize(limit, &res->limit);

    t = dify_gcra_interval(&res->limit);
    tol = res->limit.burst * t;

    /* the difference of two int64_t, computed without overflow */

    d = 0;

    if (*tat > now) {
        d = (uint64_t) *tat - (uint64_t) now;

        if (d > tol) {
            d = tol;
        }
    }

    res->retry = 0;

    if (cost > res->limit.burst) {
        res->verdict = DIFY_GCRA_NEVER;

    } else {
        need = d + cost * t;                /* cost <= 1e6, t <= 3.6e9 */

        if (need <= tol) {
            res->verdict = DIFY_GCRA_ALLOWED;
            d = need;
            *tat = (int64_t) ((uint64_t) now + d);

        } else {
            res->verdict = DIFY_GCRA_LIMITED;
            res->retry = need - tol;
        }
    }

    res->remaining = (tol - d) / t;
    res->reset = d;
}


dify_reply_rc_e
dify_gcra_parse_reply(const redisReply *reply, dify_gcra_result_t *res,
    const char **err, size_t *err_len)
{
    size_t              i;
    uint64_t            t, c, tol;
    long long           v[7];
    const char         *e;
    dify_reply_rc_e     rc;
    const redisReply   *el;
    dify_gcra_limit_t   lim;

    if (reply == NULL) {
        e = "no reply";
        goto failed;
    }

    if (reply->type == REDIS_REPLY_ERROR) {

        if (reply->str == NULL) {
            e = "error reply without a message";
            goto failed;
        }

        rc = DIFY_REPLY_ERROR;

        if (reply->len >= sizeof("NOSCRIPT") - 1
            && memcmp(reply->str, "NOSCRIPT", sizeof("NOSCRIPT") - 1) == 0)
        {
            rc = DIFY_REPLY_NOSCRIPT;
        }

        if (err != NULL) {
            *err = reply->str;
        }

        if (err_len != NULL) {
            *err_len = reply->len;
        }

        return rc;
    }

    if (reply->type != REDIS_REPLY_ARRAY) {
        e = "reply is not an array";
        goto failed;
    }

    if (reply->elements != 7 || reply->element == NULL) {
        e = "reply is not an array of 7 elements";
        goto failed;
    }

    for (i = 0; i < 7; i++) {
        el = reply->element[i];

        if (el == NULL || el->type != REDIS_REPLY_INTEGER) {
            e = "reply element is not an integer";
            goto failed;
        }

        v[i] = el->integer;
    }

    if (v[0] < DIFY_GCRA_NEVER || v[0] > DIFY_GCRA_ALLOWED) {
        e = "reply has an unknown verdict";
        goto failed;
    }

    if (v[1] < 1 || v[1] > DIFY_GCRA_MAX_RATE
        || v[2] < 1 || v[2] > DIFY_GCRA_MAX_PERIOD
        || v[3] < 1 || v[3] > DIFY_GCRA_MAX_BURST)
    {
        e = "reply has a limit out of range";
        goto failed;
    }

    lim.rate = (uint64_t) v[1];
    lim.period = (uint64_t) v[2];
    lim.burst = (uint64_t) v[3];

    t = dify_gcra_interval(&lim);
    tol = lim.burst * t;

    if (v[4] < 0 || (uint64_t) v[4] > lim.burst
        || v[5] < 0 || (uint64_t) v[5] > tol
        || v[6] < 0 || (uint64_t) v[6] > tol)
    {
        e = "reply has a state out of range";
        goto failed;
    }

    /* the relations the script's arithmetic guarantees */

    if (v[0] == DIFY_GCRA_BLOCKED) {
        if (v[4] != 0 || v[5] != 0 || v[6] != 0) {
            e = "reply of a blocked key has a state";
            goto failed;
        }

    } else if ((uint64_t) v[4] != (tol - (uint64_t) v[5]) / t
               || (v[0] == DIFY_GCRA_LIMITED) != (v[6] != 0))
    {
        e = "reply has an inconsistent state";
        goto failed;

    } else if (v[0] == DIFY_GCRA_LIMITED) {

        /*
         * retry = reset + c * T - tol for a cost c that did not fit,
         * remaining < c <= burst; so never before the header's "t"
         */

        c = (uint64_t) v[6] + (tol - (uint64_t) v[5]);

        if (c % t != 0 || c / t <= (uint64_t) v[4] || c / t > lim.burst) {
            e = "reply has an inconsistent retry";
            goto failed;
        }
    }

    res->verdict = (dify_gcra_verdict_e) v[0];
    res->limit = lim;
    res->remaining = (uint64_t) v[4];
    res->reset = (uint64_t) v[5];
    res->retry = (uint64_t) v[6];

    return DIFY_REPLY_OK;

failed:

    if (err != NULL) {
        *err = e;
    }

    if (err_len != NULL) {
        *err_len = strlen(e);
    }

    return DIFY_REPLY_ERROR;
}


int
dify_gcra_parse_rate(const unsigned char *p, size_t len, uint64_t *rate,
    uint64_t *period)
{
    uint64_t              n;
    const unsigned char  *last;

    /* the script's pattern: ^(%d+) *r?/([smh])$ */

    if (p == NULL || len == 0 || *p < '0' || *p > '9') {
        return -1;
    }

    last = p + len;
    n = 0;

    while (p < last && *p >= '0' && *p <= '9') {

        /* once above the maximum, n stays above it without overflow */

        if (n <= DIFY_GCRA_MAX_RATE) {
            n = n * 10 + (*p - '0');
        }

        p++;
    }

    if (n < 1 || n > DIFY_GCRA_MAX_RATE) {
        return -1;
    }

    while (p < last && *p == ' ') {
        p++;
    }

    if (p < last && *p == 'r') {
        p++;
    }

    if (p == last || *p++ != '/' || last - p != 1) {
        return -1;
    }

    switch (*p) {

    case 's':
        *period = 1;
        break;

    case 'm':
        *period = 60;
        break;

    case 'h':
        *period = 3600;
        break;

    default:
        return -1;
    }

    *rate = n;

    return 0;
}


/*
 * The fields of draft-ietf-httpapi-ratelimit-headers-11, for one policy
 * named by the String "default" (section 3: the policy Item "MUST be a
 * String"):
 *
 *   RateLimit-Policy: "default";q=<burst>;w=<seconds>
 *
 * q is the bucket's capacity in units (what can be spent at once from
 * a full bucket) and w the time in which an empty bucket fills again,
 * burst * T, rounded up to whole seconds (section 3.1.3: a non-zero
 * integer, no sub-second precision).  Rounding up can only understate
 * the rate.  There is no "qu": with "cost documents" a unit is a
 * document, which the registry has no name for.
 *
 *   RateLimit: "default";r=<remaining>;t=<seconds>
 *
 * r is the units spendable now.  t is the draft's "effective window"
 * (section 4.1.2, "the number of seconds within which the client can
 * use no more than the available quota"; draft 10 put it as "the
 * number of seconds until additional quota ... is made available"):
 * the time until the unit after the r spendable ones comes back, i.e.
 * d + (r + 1) * T - tol, which lies in (0, T], rounded up.  It is not
 * the time until the bucket is full: section 6 says Retry-After
 * "SHOULD NOT reference a point in time earlier than the end of the
 * effective window", and a limited request has c > r, so its retry
 * d + c * T - tol is never shorter than this t, while the time until
 * full usually is longer.
 */

size_t
dify_gcra_policy_header(char *buf, size_t size,
    const dify_gcra_limit_t *limit)
{
    int                n;
    uint64_t           w;
    dify_gcra_limit_t  lim;

    if (buf == NULL || size == 0) {
        return 0;
    }

    dify_gcra_normalize(limit, &lim);

    w = dify_gcra_ceil_sec(lim.burst * dify_gcra_interval(&lim));

    n = snprintf(buf, size, DIFY_GCRA_POLICY ";q=%" PRIu64 ";w=%" PRIu64,
                 lim.burst, w);

    if (n < 0 || (size_t) n >= size) {
        return 0;
    }

    return (size_t) n;
}


size_t
dify_gcra_ratelimit_header(char *buf, size_t size,
    const dify_gcra_result_t *res)
{
    int                n;
    uint64_t           t, tol, r, d, next;
    dify_gcra_limit_t  lim;

    if (buf == NULL || size == 0) {
        return 0;
    }

    dify_gcra_normalize(&res->limit, &lim);

    t = dify_gcra_interval(&lim);
    tol = lim.burst * t;

    r = res->remaining < lim.burst ? res->remaining : lim.burst;
    d = res->reset < tol ? res->reset : tol;

    /* d + (r + 1) * T - tol; 0 for a result without a state (blocked) */

    next = d + (r + 1) * t;
    next = next > tol ? dify_gcra_ceil_sec(next - tol) : 0;

    n = snprintf(buf, size, DIFY_GCRA_POLICY ";r=%" PRIu64 ";t=%" PRIu64,
                 r, next);

    if (n < 0 || (size_t) n >= size) {
        return 0;
    }

    return (size_t) n;
}


uint64_t
dify_gcra_retry_seconds(const dify_gcra_result_t *res)
{
    uint64_t  s;

    s = dify_gcra_ceil_sec(res->retry);

    return s ? s : 1;
}


/*
 * Out of range values are clamped, the same way the script clamps its
 * ARGV: rate and burst to [1, 1000000], period to [1, 3600].
 */

static void
dify_gcra_normalize(const dify_gcra_limit_t *limit, dify_gcra_limit_t *lim)
{
    *lim = *limit;

    if (lim->rate < 1) {
        lim->rate = 1;

    } else if (lim->rate > DIFY_GCRA_MAX_RATE) {
        lim->rate = DIFY_GCRA_MAX_RATE;
    }

    if (lim->period < 1) {
        lim->period = 1;

    } else if (lim->period > DIFY_GCRA_MAX_PERIOD) {
        lim->period = DIFY_GCRA_MAX_PERIOD;
    }

    if (lim->burst < 1) {
        lim->burst = 1;

    } else if (lim->burst > DIFY_GCRA_MAX_BURST) {
        lim->burst = DIFY_GCRA_MAX_BURST;
    }
}


static uint64_t
dify_gcra_ceil_sec(uint64_t us)
{
    return us / DIFY_GCRA_USEC + (us % DIFY_GCRA_USEC != 0);
}
