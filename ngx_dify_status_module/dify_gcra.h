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
#define DIFY_GCRA_MAX_PERIOD   86400        /* in seconds: a day */
/* burst * interval, in us: a bucket fills in 3.6e9 s (114 years) at most */
#define DIFY_GCRA_MAX_TOL      3600000000000000ULL

#define DIFY_GCRA_MAX_LIMITS   8            /* limits of one key, one call */
#define DIFY_GCRA_MAX_NAME     32           /* bytes of a limit's name */


typedef struct {
    uint64_t    rate;               /* units per period, >= 1 */
    uint64_t    period;             /* in seconds: 1, 60, 3600, 86400 */
    uint64_t    burst;              /* in units, >= 1 */
} dify_gcra_limit_t;


/*
 * A key's state for one limit: its TAT, and the interval the TAT was
 * written under (0: unknown, the state of a version before r/d, taken
 * as written under the limit in force).  When the interval in force
 * differs, what the key owes is kept in units, not in time: the units
 * owed, rounded up (the unit being refilled counts whole), weighed at
 * the new interval.
 */
typedef struct {
    int64_t     tat;                /* in us */
    uint64_t    interval;           /* in us, or 0 */
} dify_gcra_state_t;


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
 * The Lua script, run with EVALSHA, decides a batch of groups, each the
 * n limits (1 <= n <= DIFY_GCRA_MAX_LIMITS) of one key, in order:
 *   ARGV[1]      one letter and one digit per group: the group's op
 *                ("c", "d" or "r", DIFY_GCRA_OP_*) and its n
 *   KEYS         per group, in order: the key's override
 *                ("<prefix>{<hash>}:limit", a hash), then the states of
 *                its n limits ("<prefix>{<hash>}:tat" for the limit named
 *                "default", "<prefix>{<hash>}:tat:NAME" for the others)
 *   ARGV[2 ...]  per group, in order, per limit:
 *                "c" and "d": NAME RATE PERIOD BURST COST (the
 *                     location's defaults, the period in seconds): decide
 *                     and charge, under the override; "d" says that the
 *                     key is expected to have none, so that the call reads
 *                     the overrides of its "d" groups only when one EXISTS
 *                     of them all finds one (the verdicts are the same);
 *                "r": COST INTERVAL: give back the charge of a request
 *                     that another key refused.
 * With numkeys 0, the keys come in ARGV instead, right after the
 * descriptor, in the same order, and the values after them: a Redis
 * Cluster node, which takes undeclared keys of several slots in a script
 * (Redis 7.0, without a shebang) as long as it serves them all, decides
 * the groups of every slot it serves in one call.  Every command a
 * script runs there must still name keys of one slot (an MGET across
 * slots fails as "non local key"): the reads are then one MGET per
 * key's hash tag and one EXISTS per "d" group's override.  A key of a
 * slot the node does not serve (moved, or being migrated and absent)
 * fails the whole call before anything is written.
 * The time is Redis's own (TIME), one for the whole batch.  The override
 * hash has the fields "rate" and "burst" of the limit "default",
 * "NAME.rate" and "NAME.burst" of the limit NAME ("N r/s", "N r/m",
 * "N r/h" or "N r/d", the "r" optional; N), and "blocked" ("1", every
 * limit); a field absent or invalid takes the default.
 * "c" and "d" charge every limit of the group when every limit admits
 * the request, none otherwise.  The reply is one flat array: per limit
 * of a "c" or "d" group 7 integers, verdict, rate, period, burst,
 * remaining, reset (us), retry (us); per "r" group 1, the number of
 * states given back to.
 */
#define DIFY_GCRA_OP_CHARGE    'c'
#define DIFY_GCRA_OP_DEFAULT   'd'
#define DIFY_GCRA_OP_REFUND    'r'

extern const char  dify_gcra_script[];


/* the limit's interval in us, at least 1 */
uint64_t dify_gcra_interval(const dify_gcra_limit_t *limit);

/* the limit as the script clamps it (burst * interval <= MAX_TOL) */
void dify_gcra_normalize(const dify_gcra_limit_t *limit,
    dify_gcra_limit_t *lim);

/*
 * What a state owes at now under a limit, in us, at most the limit's
 * tolerance (the units owed, rounded up, when the state's interval is
 * another one).
 */
uint64_t dify_gcra_owed(const dify_gcra_state_t *st, int64_t now,
    const dify_gcra_limit_t *limit);

/*
 * The same decision as the script, on a local clock (fallback "local"
 * and the shared-memory cache of limited keys), for one limit.  *tat
 * and now are in microseconds; *tat is updated only when the verdict is
 * ALLOWED.  The state's interval is taken as the limit's.
 */
void dify_gcra_decide(int64_t *tat, int64_t now,
    const dify_gcra_limit_t *limit, uint64_t cost, dify_gcra_result_t *res);

/*
 * The script's "c" for n limits of one key: every state is charged
 * when every limit admits the request (returns 1), none otherwise
 * (returns 0); a charged state takes its limit's interval.  With
 * blocked set, every result is BLOCKED and no state is read.
 */
int dify_gcra_decide_all(dify_gcra_state_t *st, int64_t now,
    const dify_gcra_limit_t *limits, const uint64_t *costs, size_t n,
    int blocked, dify_gcra_result_t *res);

/*
 * The script's "r" for one state: gives back cost units of it, at the
 * state's own interval (at interval when it has none).  Returns 1 when
 * the state is then empty (the bucket full: the script deletes it).
 */
int dify_gcra_refund(dify_gcra_state_t *st, int64_t now, uint64_t cost,
    uint64_t interval);

/*
 * Parses the script's reply of one limit.  On DIFY_REPLY_ERROR err
 * (when not NULL) points to a static description or to the reply's own
 * error text, valid while the reply is.
 */
dify_reply_rc_e dify_gcra_parse_reply(const redisReply *reply,
    dify_gcra_result_t *res, const char **err, size_t *err_len);

/* the same for n limits: res[0 .. n - 1] */
dify_reply_rc_e dify_gcra_parse_replies(const redisReply *reply,
    dify_gcra_result_t *res, size_t n, const char **err, size_t *err_len);

/* how many elements of the batch's reply one group has */
size_t dify_gcra_reply_width(int op, size_t n);

/*
 * Parses one group's part of a batch's reply, from element (which has
 * at least dify_gcra_reply_width() elements): res[0 .. n - 1] for "c"
 * and "d", none for "r".  On DIFY_REPLY_ERROR err (when not NULL) points
 * to a static description.
 */
dify_reply_rc_e dify_gcra_parse_group(redisReply **element, int op,
    size_t n, dify_gcra_result_t *res, const char **err);

/* 1 when a result set of one call charged the key (all allowed) */
int dify_gcra_charged(const dify_gcra_result_t *res, size_t n);

/* a limit's name: 1 to 32 of [A-Za-z0-9_-]; returns 0 when valid */
int dify_gcra_valid_name(const unsigned char *p, size_t len);

/*
 * Parses "N r/s", "Nr/m", "N/h", "N r/d" (the form of the override's
 * rate field and of the rate= parameter).  Returns 0 and fills rate and
 * period, or -1.
 */
int dify_gcra_parse_rate(const unsigned char *p, size_t len,
    uint64_t *rate, uint64_t *period);

/*
 * RateLimit-Policy and RateLimit field values in the syntax of
 * draft-ietf-httpapi-ratelimit-headers-11, for the limit "default".
 * Return the length written, or 0 when size is too small.
 */
size_t dify_gcra_policy_header(char *buf, size_t size,
    const dify_gcra_limit_t *limit);
size_t dify_gcra_ratelimit_header(char *buf, size_t size,
    const dify_gcra_result_t *res);

/*
 * The same, one list member for the limit of that name (a valid name:
 * it needs no escaping as a String); the callers join the members of
 * several limits with ", ".
 */
size_t dify_gcra_policy_item(char *buf, size_t size, const char *name,
    size_t name_len, const dify_gcra_limit_t *limit);
size_t dify_gcra_ratelimit_item(char *buf, size_t size, const char *name,
    size_t name_len, const dify_gcra_result_t *res);

/* seconds, rounded up, at least 1: the Retry-After of a limited request */
uint64_t dify_gcra_retry_seconds(const dify_gcra_result_t *res);


#endif /* _DIFY_GCRA_H_INCLUDED_ */
