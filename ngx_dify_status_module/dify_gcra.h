/*
 * Copyright (C) The ngx_dify_status_module authors
 *
 * The rate limiter's arithmetic (GCRA), its Redis script, the parsing
 * of the script's reply and the RateLimit header fields.
 * Pure logic: no nginx header is included here (hiredis types only).
 */


#ifndef _DIFY_GCRA_H_INCLUDED_
#define _DIFY_GCRA_H_INCLUDED_


#include <stddef.h>
#include <stdint.h>
#include <hiredis/hiredis.h>


/*
 * A limit: "rate" units per "period" seconds, so one unit is emitted
 * every interval = period * 1000000 / rate microseconds; "burst" units
 * may be spent at once from a full bucket (GCRA tolerance burst *
 * interval).  A request of cost c passes iff
 *     max(tat, now) + c * interval - now <= burst * interval
 * and then tat becomes max(tat, now) + c * interval.
 */
#define DIFY_GCRA_MAX_RATE     1000000      /* units per period */
#define DIFY_GCRA_MAX_BURST    1000000      /* units */
#define DIFY_GCRA_MAX_PERIOD   3600         /* in seconds */


typedef struct {
    uint64_t    rate;               /* units per period, >= 1 */
    uint64_t    period;             /* in seconds: 1, 60 or 3600 */
    uint64_t    burst;              /* in units, >= 1 */
} dify_gcra_limit_t;


typedef enum {
    DIFY_GCRA_ALLOWED = 1,
    DIFY_GCRA_LIMITED = 0,
    DIFY_GCRA_BLOCKED = -1,         /* the key's override says "blocked" */
    DIFY_GCRA_NEVER = -2            /* cost > burst: can never pass */
} dify_gcra_verdict_e;


typedef struct {
    dify_gcra_verdict_e  verdict;
    dify_gcra_limit_t    limit;     /* the limit in force for the key */
    uint64_t             remaining; /* units spendable right now */
    uint64_t             reset;     /* in us: until the bucket is full */
    uint64_t             retry;     /* in us: until this cost could pass */
} dify_gcra_result_t;


typedef enum {
    DIFY_REPLY_OK = 0,
    DIFY_REPLY_NOSCRIPT,            /* load the script and try again */
    DIFY_REPLY_ERROR                /* an error reply, or a malformed one */
} dify_reply_rc_e;


/*
 * The Lua script, run with EVALSHA, numkeys 2:
 *   KEYS[1]  the key's state ("{prefix}{<hash>}:tat")
 *   KEYS[2]  the key's override ("{prefix}{<hash>}:limit", a hash)
 *   ARGV[1]  default rate, ARGV[2] default period (s),
 *   ARGV[3]  default burst, ARGV[4] cost
 * The time is Redis's own (TIME).  The override hash has the fields
 * "rate" ("N r/s", "N r/m" or "N r/h", the "r" optional), "burst" (N)
 * and "blocked" ("1"); a field absent or invalid takes the default.
 * Returns an array of 7 integers:
 *   verdict, rate, period, burst, remaining, reset (us), retry (us).
 */
extern const char  dify_gcra_script[];


/* the limit's interval in us, at least 1 */
uint64_t dify_gcra_interval(const dify_gcra_limit_t *limit);

/*
 * The same decision as the script, on a local clock (fallback "local"
 * and the shared-memory cache of limited keys).  *tat and now are in
 * microseconds; *tat is updated only when the verdict is ALLOWED.
 */
void dify_gcra_decide(int64_t *tat, int64_t now,
    const dify_gcra_limit_t *limit, uint64_t cost, dify_gcra_result_t *res);

/*
 * Parses the script's reply.  On DIFY_REPLY_ERROR err (when not NULL)
 * points to a static description or to the reply's own error text,
 * valid while the reply is.
 */
dify_reply_rc_e dify_gcra_parse_reply(const redisReply *reply,
    dify_gcra_result_t *res, const char **err, size_t *err_len);

/*
 * Parses "N r/s", "Nr/m", "N/h" (the form of the override's rate field
 * and of the rate= parameter).  Returns 0 and fills rate and period,
 * or -1.
 */
int dify_gcra_parse_rate(const unsigned char *p, size_t len,
    uint64_t *rate, uint64_t *period);

/*
 * RateLimit-Policy and RateLimit field values in the syntax of
 * draft-ietf-httpapi-ratelimit-headers-11.  Return the length written,
 * or 0 when size is too small.
 */
size_t dify_gcra_policy_header(char *buf, size_t size,
    const dify_gcra_limit_t *limit);
size_t dify_gcra_ratelimit_header(char *buf, size_t size,
    const dify_gcra_result_t *res);

/* seconds, rounded up, at least 1: the Retry-After of a limited request */
uint64_t dify_gcra_retry_seconds(const dify_gcra_result_t *res);


#endif /* _DIFY_GCRA_H_INCLUDED_ */
