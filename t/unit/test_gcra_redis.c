/*
 * Copyright (C) The ngx_dify_status_module authors
 *
 * Runs the real Lua script on a real redis-server and checks that it
 * agrees with dify_gcra_decide() field by field.
 *
 * The test starts its own redis-server in a temporary directory,
 * listening on a unix socket only (--port 0: no TCP port at all, so it
 * cannot collide with anyone's Redis), and kills exactly that process
 * when done; the server also gets SIGTERM should this test die first
 * (PR_SET_PDEATHSIG).  Without redis-server every test is skipped.
 * DIFY_REDIS_SERVER overrides the path of the binary.
 *
 * The script takes its time from Redis (TIME), so each step runs in
 * one MULTI/EXEC: TIME, EVALSHA, GET, PEXPIRETIME, TIME (Redis 7.0
 * for PEXPIRETIME; the script itself needs 6.2).  The script's own
 * "now" is then known exactly: tat - reset when it wrote the state,
 * and the previous TAT - reset otherwise; it must lie between the two
 * TIMEs.  dify_gcra_decide() run at that "now" on a local copy of the
 * state must give the same reply, and the same new state.
 */


#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <cmocka.h>

#include "dify_gcra.h"


#define TEST_SERVER  "/usr/bin/redis-server"


typedef struct {
    int                 missing;            /* no redis-server: skip */
    pid_t               pid;
    char                dir[64];
    char                sock[128];
    char                log[128];
    redisContext       *c;
    char                sha[41];
} test_redis_t;


typedef struct {
    const char         *key;                /* KEYS[1] */
    const char         *okey;               /* KEYS[2] */
    int64_t             tat;                /* the local copy, in us */
    uint64_t            iv;                 /* and its interval */
    dify_gcra_limit_t   args;               /* ARGV 1-3 */
    dify_gcra_limit_t   limit;              /* expected: args + override */
} test_key_t;


static test_redis_t  tr;


static dify_gcra_limit_t
lim(uint64_t rate, uint64_t period, uint64_t burst)
{
    dify_gcra_limit_t  l;

    l.rate = rate;
    l.period = period;
    l.burst = burst;

    return l;
}


static void
msleep(long ms)
{
    struct timespec  ts;

    ts.tv_sec = ms / 1000;
    ts.tv_nsec = (ms % 1000) * 1000000L;

    while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {
        /* void */
    }
}


static int
server_start(void)
{
    int             i, fd, status;
    pid_t           parent;
    const char     *bin;
    redisReply     *reply;
    struct timeval  tv;

    bin = getenv("DIFY_REDIS_SERVER");

    if (bin == NULL) {
        bin = TEST_SERVER;
    }

    if (access(bin, X_OK) != 0) {
        print_message("# %s not found: skipping\n", bin);
        tr.missing = 1;
        return 0;
    }

    strcpy(tr.dir, "/tmp/dify-gcra-redis.XXXXXX");

    if (mkdtemp(tr.dir) == NULL) {
        print_error("mkdtemp() failed: %s\n", strerror(errno));
        return -1;
    }

    snprintf(tr.sock, sizeof(tr.sock), "%s/redis.sock", tr.dir);
    snprintf(tr.log, sizeof(tr.log), "%s/redis.log", tr.dir);

    parent = getpid();
    tr.pid = fork();

    if (tr.pid == -1) {
        print_error("fork() failed: %s\n", strerror(errno));
        return -1;
    }

    if (tr.pid == 0) {
        (void) prctl(PR_SET_PDEATHSIG, SIGTERM);

        if (getppid() != parent) {
            _exit(1);
        }

        fd = open("/dev/null", O_RDWR);

        if (fd != -1) {
            (void) dup2(fd, 0);
            (void) dup2(fd, 1);
            (void) dup2(fd, 2);
        }

        execl(bin, "redis-server",
              "--port", "0",
              "--unixsocket", tr.sock,
              "--unixsocketperm", "700",
              "--save", "",
              "--appendonly", "no",
              "--dir", tr.dir,
              "--logfile", tr.log,
              "--daemonize", "no",
              (char *) NULL);

        _exit(127);
    }

    tv.tv_sec = 5;
    tv.tv_usec = 0;

    for (i = 0; i < 1000; i++) {

        if (waitpid(tr.pid, &status, WNOHANG) == tr.pid) {
            print_error("redis-server exited at once, see %s\n", tr.log);
            tr.pid = 0;
            return -1;
        }

        tr.c = redisConnectUnix(tr.sock);

        if (tr.c != NULL && tr.c->err == 0) {
            break;
        }

        if (tr.c != NULL) {
            redisFree(tr.c);
            tr.c = NULL;
        }

        msleep(10);
    }

    if (tr.c == NULL) {
        print_error("cannot connect to %s\n", tr.sock);
        return -1;
    }

    (void) redisSetTimeout(tr.c, tv);

    reply = redisCommand(tr.c, "SCRIPT LOAD %s", dify_gcra_script);

    if (reply == NULL || reply->type != REDIS_REPLY_STRING
        || reply->len != 40)
    {
        print_error("SCRIPT LOAD failed: %s\n",
                    reply && reply->str ? reply->str : tr.c->errstr);
        if (reply) {
            freeReplyObject(reply);
        }
        return -1;
    }

    memcpy(tr.sha, reply->str, 41);
    freeReplyObject(reply);

    return 0;
}


static int
group_setup(void **state)
{
    (void) state;

    if (server_start() != 0) {
        return -1;
    }

    return 0;
}


static int
group_teardown(void **state)
{
    int   i, status;
    char  path[192];

    (void) state;

    if (tr.c != NULL) {
        redisFree(tr.c);
        tr.c = NULL;
    }

    if (tr.pid > 0) {
        (void) kill(tr.pid, SIGTERM);

        for (i = 0; i < 500; i++) {
            if (waitpid(tr.pid, &status, WNOHANG) == tr.pid) {
                break;
            }

            msleep(10);
        }

        if (i == 500) {
            (void) kill(tr.pid, SIGKILL);
            (void) waitpid(tr.pid, &status, 0);
        }

        tr.pid = 0;
    }

    if (tr.dir[0] != '\0') {
        (void) unlink(tr.sock);
        (void) unlink(tr.log);
        snprintf(path, sizeof(path), "%s/dump.rdb", tr.dir);
        (void) unlink(path);
        (void) rmdir(tr.dir);
    }

    return 0;
}


static int
test_setup(void **state)
{
    redisReply  *reply;

    (void) state;

    if (tr.missing) {
        return 0;
    }

    reply = redisCommand(tr.c, "FLUSHALL");
    assert_non_null(reply);
    freeReplyObject(reply);

    return 0;
}


static redisReply *
cmd(const char *fmt, ...)
{
    va_list      args;
    redisReply  *reply;

    va_start(args, fmt);
    reply = redisvCommand(tr.c, fmt, args);
    va_end(args);

    if (reply == NULL) {
        fail_msg("redis: %s", tr.c->errstr);
    }

    return reply;
}


static void
cmd_ok(const char *fmt, ...)
{
    va_list      args;
    redisReply  *reply;

    va_start(args, fmt);
    reply = redisvCommand(tr.c, fmt, args);
    va_end(args);

    if (reply == NULL) {
        fail_msg("redis: %s", tr.c->errstr);
    }

    if (reply->type == REDIS_REPLY_ERROR) {
        fail_msg("redis: %s", reply->str);
    }

    freeReplyObject(reply);
}


static int64_t
time_us(const redisReply *t)
{
    assert_int_equal(t->type, REDIS_REPLY_ARRAY);
    assert_int_equal(t->elements, 2);

    return strtoll(t->element[0]->str, NULL, 10) * 1000000
           + strtoll(t->element[1]->str, NULL, 10);
}


/* EVALSHA with ARGV as strings; the caller frees the reply */

static redisReply *
eval_raw(const char *key, const char *okey, const char *rate,
    const char *period, const char *burst, const char *cost)
{
    char         packed[256];
    const char  *argv[7];

    snprintf(packed, sizeof(packed), "default %s %s %s %s",
             rate, period, burst, cost);

    argv[0] = "EVALSHA";
    argv[1] = tr.sha;
    argv[2] = "2";
    argv[3] = okey;
    argv[4] = key;
    argv[5] = "c";
    argv[6] = packed;

    return redisCommandArgv(tr.c, 7, argv, NULL);
}


/*
 * One step, checked against dify_gcra_decide() on k->tat.  Returns the
 * verdict; *out (when not NULL) gets the parsed result.
 */

static dify_gcra_verdict_e
step(test_key_t *k, uint64_t cost, dify_gcra_result_t *out)
{
    int                 i;
    char                a[160], *colon;
    int64_t             t0, t1, now, tat, stored;
    int                 ends;
    uint64_t            t, tol, stored_iv;
    long long           when;
    redisReply         *exec, *r;
    dify_gcra_state_t   st;
    dify_gcra_result_t  got, exp;
    const char         *argv[7], *err;

    snprintf(a, sizeof(a), "default %llu %llu %llu %llu",
             (unsigned long long) k->args.rate,
             (unsigned long long) k->args.period,
             (unsigned long long) k->args.burst,
             (unsigned long long) cost);

    argv[0] = "EVALSHA";
    argv[1] = tr.sha;
    argv[2] = "2";
    argv[3] = k->okey;
    argv[4] = k->key;
    argv[5] = "c";
    argv[6] = a;

    (void) redisAppendCommand(tr.c, "MULTI");
    (void) redisAppendCommand(tr.c, "TIME");
    (void) redisAppendCommandArgv(tr.c, 7, argv, NULL);
    (void) redisAppendCommand(tr.c, "GET %s", k->key);
    (void) redisAppendCommand(tr.c, "PEXPIRETIME %s", k->key);
    (void) redisAppendCommand(tr.c, "TIME");
    (void) redisAppendCommand(tr.c, "EXEC");

    for (i = 0; i < 6; i++) {
        assert_int_equal(redisGetReply(tr.c, (void **) &r), REDIS_OK);
        freeReplyObject(r);
    }

    assert_int_equal(redisGetReply(tr.c, (void **) &exec), REDIS_OK);
    assert_int_equal(exec->type, REDIS_REPLY_ARRAY);
    assert_int_equal(exec->elements, 5);

    t0 = time_us(exec->element[0]);
    t1 = time_us(exec->element[4]);

    err = NULL;

    if (dify_gcra_parse_reply(exec->element[1], &got, &err, NULL)
        != DIFY_REPLY_OK)
    {
        fail_msg("script reply rejected: %s", err);
    }

    /* the state: "TAT.IIIIIIIIIII" */

    r = exec->element[2];
    stored = 0;
    stored_iv = 0;

    if (r->type == REDIS_REPLY_STRING) {
        stored = strtoll(r->str, &colon, 10);

        if (*colon == '.') {
            assert_int_equal(strlen(colon + 1), 11);
            stored_iv = strtoull(colon + 1, NULL, 10);
        }
    }

    when = exec->element[3]->integer;
    ends = 0;

    /* the limit in force: ARGV clamped, then the override */

    assert_int_equal(got.limit.rate, k->limit.rate);
    assert_int_equal(got.limit.period, k->limit.period);
    assert_int_equal(got.limit.burst, k->limit.burst);

    t = dify_gcra_interval(&k->limit);
    tol = k->limit.burst * t;

    /* the script's "now" */

    if (got.verdict == DIFY_GCRA_ALLOWED && got.reset > 0
        && r->type == REDIS_REPLY_STRING)
    {
        now = stored - (int64_t) got.reset;
        assert_true(now >= t0 && now <= t1);

        /* expires when the bucket is full again, not a microsecond less */
        assert_int_equal(when, (stored + 999) / 1000);

    } else if (got.verdict == DIFY_GCRA_ALLOWED && got.reset > 0) {

        /*
         * written, and expired already within this EXEC: only a cost
         * of 0 leaves a TAT so close; it is the previous one
         */

        assert_int_equal(cost, 0);
        assert_true((k->tat + 999) / 1000 * 1000 <= t1);
        now = k->tat - (int64_t) got.reset;
        assert_true(now >= t0 && now <= t1);

    } else if (got.reset > 0 && k->iv != 0 && k->iv != t) {

        /*
         * owed in units of another interval: a step function of the
         * script's "now", which lies in [t0, t1]; one of the ends gives
         * the same units
         */

        now = t0;
        ends = 1;

    } else if (got.reset > 0) {
        now = k->tat - (int64_t) got.reset;

        if (got.reset < tol) {
            assert_true(now >= t0 && now <= t1);
        }

    } else {
        now = t1;                           /* any time after k->tat */
    }

    tat = k->tat;
    st.tat = k->tat;
    st.interval = k->iv;

    if (dify_gcra_decide_all(&st, now, &k->limit, &cost, 1, 0, &exp)) {
        k->tat = st.tat;
        k->iv = st.interval;
    }

    if (ends && (got.verdict != exp.verdict || got.reset != exp.reset)) {
        now = t1;
        st.tat = k->tat;
        st.interval = k->iv;
        (void) dify_gcra_decide_all(&st, now, &k->limit, &cost, 1, 0, &exp);
    }

    if (got.verdict != exp.verdict || got.remaining != exp.remaining
        || got.reset != exp.reset || got.retry != exp.retry)
    {
        fail_msg("cost %llu, tat %lld, now %lld: redis %d %llu %llu %llu, "
                 "decide %d %llu %llu %llu",
                 (unsigned long long) cost, (long long) tat,
                 (long long) now, got.verdict,
                 (unsigned long long) got.remaining,
                 (unsigned long long) got.reset,
                 (unsigned long long) got.retry, exp.verdict,
                 (unsigned long long) exp.remaining,
                 (unsigned long long) exp.reset,
                 (unsigned long long) exp.retry);
    }

    /* the same new state: written only when allowed and owing */

    if (got.verdict == DIFY_GCRA_ALLOWED && got.reset > 0) {
        assert_int_equal(stored, k->tat);
        assert_int_equal(stored_iv, t);

    } else if (got.verdict != DIFY_GCRA_ALLOWED) {
        assert_int_equal(k->tat, tat);
    }

    freeReplyObject(exec);

    if (out != NULL) {
        *out = got;
    }

    return got.verdict;
}


static void
key_init(test_key_t *k, const char *key, const char *okey,
    dify_gcra_limit_t args)
{
    k->key = key;
    k->okey = okey;
    k->tat = 0;
    k->iv = 0;
    k->args = args;
    k->limit = args;
}


/* the override's burst field: digits only, 1..1000000 */

static int
burst_field(const char *s, uint64_t *burst)
{
    uint64_t     n;
    const char  *p;

    if (*s == '\0') {
        return -1;
    }

    n = 0;

    for (p = s; *p; p++) {
        if (*p < '0' || *p > '9') {
            return -1;
        }

        if (n <= 1000000) {
            n = n * 10 + (uint64_t) (*p - '0');
        }
    }

    if (n < 1 || n > 1000000) {
        return -1;
    }

    *burst = n;

    return 0;
}


/* sets the override and what the key's limit should then be */

static void
override(test_key_t *k, const char *rate, size_t rate_len, const char *burst)
{
    uint64_t  r, p, b;

    cmd_ok("DEL %s", k->okey);
    k->limit = k->args;

    if (rate != NULL) {
        cmd_ok("HSET %s rate %b", k->okey, rate, rate_len);

        if (dify_gcra_parse_rate((const unsigned char *) rate, rate_len,
                                 &r, &p) == 0)
        {
            /* an override rate brings its own burst */
            k->limit.rate = r;
            k->limit.period = p;
            k->limit.burst = r;
        }
    }

    if (burst != NULL) {
        cmd_ok("HSET %s burst %s", k->okey, burst);

        if (burst_field(burst, &b) == 0) {
            k->limit.burst = b;
        }
    }
}


static void
test_noscript(void **state)
{
    const char          *err;
    redisReply          *reply;
    dify_gcra_result_t   res;
    char                 sha[41];

    (void) state;

    if (tr.missing) {
        skip();
    }

    memcpy(sha, tr.sha, 41);

    /* an unknown script */

    memcpy(tr.sha, "0000000000000000000000000000000000000000", 41);
    reply = eval_raw("k", "o", "10", "1", "5", "1");
    memcpy(tr.sha, sha, 41);

    assert_non_null(reply);
    err = NULL;
    assert_int_equal(dify_gcra_parse_reply(reply, &res, &err, NULL),
                     DIFY_REPLY_NOSCRIPT);
    assert_non_null(err);
    freeReplyObject(reply);

    /* flushed from the cache, as after a restart: load and retry */

    cmd_ok("SCRIPT FLUSH");

    reply = eval_raw("k", "o", "10", "1", "5", "1");
    assert_int_equal(dify_gcra_parse_reply(reply, &res, NULL, NULL),
                     DIFY_REPLY_NOSCRIPT);
    freeReplyObject(reply);

    reply = cmd("SCRIPT LOAD %s", dify_gcra_script);
    assert_int_equal(reply->type, REDIS_REPLY_STRING);
    assert_string_equal(reply->str, tr.sha);
    freeReplyObject(reply);

    reply = eval_raw("k", "o", "10", "1", "5", "1");
    assert_int_equal(dify_gcra_parse_reply(reply, &res, NULL, NULL),
                     DIFY_REPLY_OK);
    assert_int_equal(res.verdict, DIFY_GCRA_ALLOWED);
    assert_int_equal(res.remaining, 4);
    freeReplyObject(reply);

    /* EVAL with the text works the same */

    reply = cmd("EVAL %s 2 o k c %s", dify_gcra_script, "default 10 1 5 1");
    assert_int_equal(dify_gcra_parse_reply(reply, &res, NULL, NULL),
                     DIFY_REPLY_OK);
    assert_int_equal(res.verdict, DIFY_GCRA_ALLOWED);
    assert_int_equal(res.remaining, 3);
    freeReplyObject(reply);
}


static void
test_burst_exact(void **state)
{
    int                 i;
    test_key_t          k;
    dify_gcra_result_t  res;

    (void) state;

    if (tr.missing) {
        skip();
    }

    /* 1 r/m: nothing comes back during the test */

    key_init(&k, "b:tat", "b:lim", lim(1, 60, 5));

    for (i = 1; i <= 5; i++) {
        assert_int_equal(step(&k, 1, &res), DIFY_GCRA_ALLOWED);
        assert_int_equal(res.remaining, 5 - i);
    }

    assert_int_equal(step(&k, 1, &res), DIFY_GCRA_LIMITED);
    assert_int_equal(res.remaining, 0);
    assert_true(res.retry > 0 && res.retry <= 60000000);
    assert_int_equal(step(&k, 0, &res), DIFY_GCRA_ALLOWED);
    assert_int_equal(step(&k, 1, &res), DIFY_GCRA_LIMITED);

    /* cost > 1: 3 + 2, then 1 more is too many */

    key_init(&k, "c:tat", "c:lim", lim(1, 60, 5));

    assert_int_equal(step(&k, 3, &res), DIFY_GCRA_ALLOWED);
    assert_int_equal(res.remaining, 2);
    assert_int_equal(step(&k, 3, &res), DIFY_GCRA_LIMITED);
    assert_int_equal(res.remaining, 2);
    assert_int_equal(step(&k, 2, &res), DIFY_GCRA_ALLOWED);
    assert_int_equal(res.remaining, 0);
    assert_int_equal(step(&k, 1, &res), DIFY_GCRA_LIMITED);
}


static void
test_never(void **state)
{
    test_key_t          k;
    redisReply         *before, *after, *reply;
    dify_gcra_result_t  res;

    (void) state;

    if (tr.missing) {
        skip();
    }

    key_init(&k, "n:tat", "n:lim", lim(1, 60, 5));

    /* with no state */

    assert_int_equal(step(&k, 6, &res), DIFY_GCRA_NEVER);
    assert_int_equal(res.remaining, 5);
    assert_int_equal(res.reset, 0);
    assert_int_equal(res.retry, 0);

    reply = cmd("EXISTS n:tat");
    assert_int_equal(reply->integer, 0);
    freeReplyObject(reply);

    /* with a state, which it reports and does not touch */

    assert_int_equal(step(&k, 2, &res), DIFY_GCRA_ALLOWED);

    before = cmd("GET n:tat");
    assert_int_equal(step(&k, 6, &res), DIFY_GCRA_NEVER);
    assert_int_equal(res.remaining, 3);
    after = cmd("GET n:tat");
    assert_string_equal(before->str, after->str);
    freeReplyObject(before);
    freeReplyObject(after);

    /* a cost beyond any integer */

    reply = eval_raw("n:tat", "n:lim", "1", "60", "5",
                     "999999999999999999999999999999");
    assert_int_equal(dify_gcra_parse_reply(reply, &res, NULL, NULL),
                     DIFY_REPLY_OK);
    assert_int_equal(res.verdict, DIFY_GCRA_NEVER);
    freeReplyObject(reply);
}


static void
test_refill(void **state)
{
    test_key_t          k;
    dify_gcra_result_t  res;

    (void) state;

    if (tr.missing) {
        skip();
    }

    /* 2 r/s burst 2: one unit every 500 ms */

    key_init(&k, "r:tat", "r:lim", lim(2, 1, 2));

    assert_int_equal(step(&k, 1, &res), DIFY_GCRA_ALLOWED);
    assert_int_equal(step(&k, 1, &res), DIFY_GCRA_ALLOWED);
    assert_int_equal(step(&k, 1, &res), DIFY_GCRA_LIMITED);
    assert_true(res.retry > 0 && res.retry <= 500000);

    msleep((long) (res.retry / 1000) + 20);

    assert_int_equal(step(&k, 1, &res), DIFY_GCRA_ALLOWED);
    assert_int_equal(res.remaining, 0);
    assert_int_equal(step(&k, 1, &res), DIFY_GCRA_LIMITED);

    /* a whole bucket back after 1 s */

    msleep(1020);

    assert_int_equal(step(&k, 2, &res), DIFY_GCRA_ALLOWED);
    assert_int_equal(res.remaining, 0);
}


static void
test_expiry(void **state)
{
    test_key_t          k;
    redisReply         *reply;
    dify_gcra_result_t  res;

    (void) state;

    if (tr.missing) {
        skip();
    }

    /* 100 r/s burst 3: full again 30 ms after a cost of 3 */

    key_init(&k, "e:tat", "e:lim", lim(100, 1, 3));

    assert_int_equal(step(&k, 3, &res), DIFY_GCRA_ALLOWED);

    reply = cmd("PTTL e:tat");
    assert_true(reply->integer >= 0 && reply->integer <= 31);
    freeReplyObject(reply);

    msleep(60);

    reply = cmd("EXISTS e:tat");
    assert_int_equal(reply->integer, 0);
    freeReplyObject(reply);

    assert_int_equal(step(&k, 3, &res), DIFY_GCRA_ALLOWED);

    /* cost 0 on a full bucket writes nothing */

    key_init(&k, "e0:tat", "e0:lim", lim(100, 1, 3));
    assert_int_equal(step(&k, 0, &res), DIFY_GCRA_ALLOWED);
    assert_int_equal(res.remaining, 3);

    reply = cmd("EXISTS e0:tat");
    assert_int_equal(reply->integer, 0);
    freeReplyObject(reply);
}


static void
test_overrides(void **state)
{
    size_t              i, j;
    test_key_t          k;
    dify_gcra_result_t  res;
    const char         *rates[] = {
        "100r/m", "100 r/m", "100/m", "100 /m", "100   r/m", "5/s",
        "7/h", "3r/s", "0010/s", "1000000r/s", "1r/h",
        "1000001r/s", "0r/s", "abc", "", " 10r/s", "10r/s ", "10R/s",
        "10r/d", "1.5r/s", "-1r/s", "+1r/s", "10r/s\n", "10rr/s",
        "99999999999999999999r/s", "18446744073709551617/s",
        "\xef\xbc\x91" "0r/s", "10\tr/s", "10r/", "r/s"
    };
    const char         *bursts[] = {
        "3", "0003", "1", "1000000", "1000001", "0", "abc", "", " 3",
        "3 ", "-3", "1e3", "2.0", "+3", "99999999999999999999"
    };

    (void) state;

    if (tr.missing) {
        skip();
    }

    key_init(&k, "o:tat", "o:lim", lim(10, 1, 5));

    for (i = 0; i < sizeof(rates) / sizeof(rates[0]); i++) {
        cmd_ok("DEL o:tat");
        k.tat = 0;
        override(&k, rates[i], strlen(rates[i]), NULL);
        step(&k, 1, NULL);
    }

    /* binary: the length ends the field, not a NUL */

    cmd_ok("DEL o:tat");
    k.tat = 0;
    override(&k, "10\0r/s", 6, NULL);
    assert_int_equal(k.limit.rate, 10);     /* default: rejected */
    step(&k, 1, &res);

    /* a burst alone keeps the default rate */

    for (j = 0; j < sizeof(bursts) / sizeof(bursts[0]); j++) {
        cmd_ok("DEL o:tat");
        k.tat = 0;
        override(&k, NULL, 0, bursts[j]);
        step(&k, 1, &res);
        assert_int_equal(res.limit.rate, 10);
        assert_int_equal(res.limit.period, 1);
    }

    override(&k, NULL, 0, "3");
    cmd_ok("DEL o:tat");
    k.tat = 0;
    step(&k, 1, &res);
    assert_int_equal(res.limit.burst, 3);
    assert_int_equal(res.remaining, 2);

    /* both */

    override(&k, "100 r/m", 7, "2");
    cmd_ok("DEL o:tat");
    k.tat = 0;
    assert_int_equal(step(&k, 1, &res), DIFY_GCRA_ALLOWED);
    assert_int_equal(res.limit.rate, 100);
    assert_int_equal(res.limit.period, 60);
    assert_int_equal(res.limit.burst, 2);
    assert_int_equal(res.remaining, 1);
    assert_int_equal(step(&k, 1, &res), DIFY_GCRA_ALLOWED);
    assert_int_equal(step(&k, 1, &res), DIFY_GCRA_LIMITED);

    /*
     * a lower limit on a key in debt (2 units at 0.6 s): the units are
     * kept, at most one bucket of the new limit (1 unit at 1 ms)
     */

    override(&k, "1000r/s", 7, "1");
    assert_int_equal(step(&k, 1, &res), DIFY_GCRA_LIMITED);
    assert_int_equal(res.reset, 1000);
    assert_int_equal(res.retry, 1000);

    /* back to 10 r/s burst 5: the 2 units, not 1.2 s of debt (12 units) */

    override(&k, NULL, 0, NULL);
    assert_int_equal(step(&k, 1, &res), DIFY_GCRA_ALLOWED);
    assert_int_equal(res.reset, 300000);
    assert_int_equal(res.remaining, 2);
}


static void
test_blocked(void **state)
{
    size_t               i;
    test_key_t           k;
    redisReply          *before, *after, *reply;
    dify_gcra_result_t   res;
    const char          *not_blocked[] = { "0", "true", "yes", "11", " 1",
                                           "1 ", "" };

    (void) state;

    if (tr.missing) {
        skip();
    }

    key_init(&k, "x:tat", "x:lim", lim(10, 1, 5));
    assert_int_equal(step(&k, 2, &res), DIFY_GCRA_ALLOWED);

    before = cmd("GET x:tat");
    cmd_ok("HSET x:lim blocked 1 rate 7/m burst 9");

    reply = eval_raw("x:tat", "x:lim", "10", "1", "5", "1");
    assert_int_equal(dify_gcra_parse_reply(reply, &res, NULL, NULL),
                     DIFY_REPLY_OK);
    assert_int_equal(res.verdict, DIFY_GCRA_BLOCKED);
    assert_int_equal(res.limit.rate, 7);
    assert_int_equal(res.limit.period, 60);
    assert_int_equal(res.limit.burst, 9);
    assert_int_equal(res.remaining, 0);
    assert_int_equal(res.reset, 0);
    assert_int_equal(res.retry, 0);
    freeReplyObject(reply);

    /* even a cost that could never pass is "blocked" */

    reply = eval_raw("x:tat", "x:lim", "10", "1", "5", "100");
    assert_int_equal(dify_gcra_parse_reply(reply, &res, NULL, NULL),
                     DIFY_REPLY_OK);
    assert_int_equal(res.verdict, DIFY_GCRA_BLOCKED);
    freeReplyObject(reply);

    after = cmd("GET x:tat");
    assert_string_equal(before->str, after->str);
    freeReplyObject(before);
    freeReplyObject(after);

    /* blocked on a key without a state creates none */

    reply = eval_raw("y:tat", "x:lim", "10", "1", "5", "1");
    freeReplyObject(reply);
    reply = cmd("EXISTS y:tat");
    assert_int_equal(reply->integer, 0);
    freeReplyObject(reply);

    /* only "1" blocks */

    for (i = 0; i < sizeof(not_blocked) / sizeof(not_blocked[0]); i++) {
        cmd_ok("HSET x:lim blocked %s", not_blocked[i]);
        k.limit = lim(7, 60, 9);
        assert_true(step(&k, 1, &res) != DIFY_GCRA_BLOCKED);
    }
}


static void
test_foreign_state(void **state)
{
    size_t               i;
    size_t               len;
    test_key_t           k;
    redisReply          *reply;
    const char          *err;
    dify_gcra_result_t   res;
    const char          *absent[] = { "abc", "", "-5", "nan", "-nan",
                                      "-inf", "1.5", "0", "0x10",
                                      "-99999999999999999999" };
    const char          *ahead[] = { "inf", "1e300", "99999999999999999999",
                                     "4611686018427387904" };

    (void) state;

    if (tr.missing) {
        skip();
    }

    key_init(&k, "f:tat", "f:lim", lim(10, 1, 5));

    /* not a number, negative, in the past: a full bucket */

    for (i = 0; i < sizeof(absent) / sizeof(absent[0]); i++) {
        cmd_ok("SET f:tat %s", absent[i]);
        k.tat = 0;
        assert_int_equal(step(&k, 1, &res), DIFY_GCRA_ALLOWED);
        assert_int_equal(res.remaining, 4);
    }

    /* far ahead: one bucket owed, nothing more, nothing written */

    for (i = 0; i < sizeof(ahead) / sizeof(ahead[0]); i++) {
        cmd_ok("SET f:tat %s", ahead[i]);
        k.tat = INT64_MAX;
        k.iv = 0;
        assert_int_equal(step(&k, 1, &res), DIFY_GCRA_LIMITED);
        assert_int_equal(res.reset, 500000);
        assert_int_equal(res.retry, 100000);

        reply = cmd("GET f:tat");
        assert_string_equal(reply->str, ahead[i]);
        freeReplyObject(reply);
    }

    /* a state of another type: an error, not a crash */

    cmd_ok("DEL f:tat");
    cmd_ok("HSET f:tat a b");

    reply = eval_raw("f:tat", "f:lim", "10", "1", "5", "1");
    err = NULL;
    len = 0;
    assert_int_equal(dify_gcra_parse_reply(reply, &res, &err, &len),
                     DIFY_REPLY_ERROR);
    assert_non_null(strstr(err, "WRONGTYPE"));
    assert_int_equal(len, strlen(err));
    freeReplyObject(reply);

    cmd_ok("DEL f:tat");
    cmd_ok("SET f:lim 1");

    reply = eval_raw("f:tat", "f:lim", "10", "1", "5", "1");
    assert_int_equal(dify_gcra_parse_reply(reply, &res, NULL, NULL),
                     DIFY_REPLY_ERROR);
    freeReplyObject(reply);
}


/*
 * Two limits of one key in one call: one refuses, neither is charged;
 * both admit, both are; "r" gives the units back; and a state as an
 * older node's script reads it (tonumber, floor) is its TAT.
 */

static void
test_several(void **state)
{
    char                 *dot;
    int64_t               tat0, tat1;
    redisReply           *reply;
    dify_gcra_result_t    res[2];

    (void) state;

    if (tr.missing) {
        skip();
    }

    cmd_ok("DEL s:lim s:tat s:tat:day");

    /* default 10 r/s burst 5, day 2 r/d burst 1: the day admits once */

    reply = cmd("EVALSHA %s 3 s:lim s:tat s:tat:day c %s", tr.sha,
                "default 10 1 5 1 day 2 86400 1 1");
    assert_int_equal(dify_gcra_parse_replies(reply, res, 2, NULL, NULL),
                     DIFY_REPLY_OK);
    assert_int_equal(dify_gcra_charged(res, 2), 1);
    assert_int_equal(res[0].remaining, 4);
    assert_int_equal(res[1].remaining, 0);
    assert_int_equal(res[1].reset, 43200000000ULL);
    freeReplyObject(reply);

    reply = cmd("GET s:tat");
    tat0 = strtoll(reply->str, &dot, 10);
    assert_string_equal(dot, ".00000100000");
    freeReplyObject(reply);

    reply = cmd("GET s:tat:day");
    tat1 = strtoll(reply->str, &dot, 10);
    assert_string_equal(dot, ".43200000000");
    freeReplyObject(reply);

    /* the day refuses: the default is not charged */

    reply = cmd("EVALSHA %s 3 s:lim s:tat s:tat:day c %s", tr.sha,
                "default 10 1 5 1 day 2 86400 1 1");
    assert_int_equal(dify_gcra_parse_replies(reply, res, 2, NULL, NULL),
                     DIFY_REPLY_OK);
    assert_int_equal(dify_gcra_charged(res, 2), 0);
    assert_int_equal(res[0].verdict, DIFY_GCRA_ALLOWED);
    assert_int_equal(res[1].verdict, DIFY_GCRA_LIMITED);
    freeReplyObject(reply);

    reply = cmd("GET s:tat");
    assert_int_equal(strtoll(reply->str, NULL, 10), tat0);
    freeReplyObject(reply);

    /* per-limit overrides: day.burst 3; the block is every limit's */

    cmd_ok("HSET s:lim day.burst 3");
    reply = cmd("EVALSHA %s 3 s:lim s:tat s:tat:day c %s", tr.sha,
                "default 10 1 5 1 day 2 86400 1 1");
    assert_int_equal(dify_gcra_parse_replies(reply, res, 2, NULL, NULL),
                     DIFY_REPLY_OK);
    assert_int_equal(dify_gcra_charged(res, 2), 1);
    assert_int_equal(res[1].limit.burst, 3);
    assert_int_equal(res[1].remaining, 1);
    freeReplyObject(reply);

    cmd_ok("HSET s:lim blocked 1");
    reply = cmd("EVALSHA %s 3 s:lim s:tat s:tat:day c %s", tr.sha,
                "default 10 1 5 1 day 2 86400 1 1");
    assert_int_equal(dify_gcra_parse_replies(reply, res, 2, NULL, NULL),
                     DIFY_REPLY_OK);
    assert_int_equal(res[0].verdict, DIFY_GCRA_BLOCKED);
    assert_int_equal(res[1].verdict, DIFY_GCRA_BLOCKED);
    freeReplyObject(reply);
    cmd_ok("HDEL s:lim blocked");

    /* "r": one unit back to each, at each state's own interval */

    reply = cmd("GET s:tat:day");
    tat1 = strtoll(reply->str, NULL, 10);
    freeReplyObject(reply);

    reply = cmd("EVALSHA %s 3 s:lim s:tat s:tat:day r %s", tr.sha,
                "1 100000 1 43200000000");
    assert_int_equal(reply->type, REDIS_REPLY_INTEGER);
    assert_int_equal(reply->integer, 2);
    freeReplyObject(reply);

    reply = cmd("GET s:tat:day");
    assert_int_equal(strtoll(reply->str, NULL, 10), tat1 - 43200000000LL);
    freeReplyObject(reply);

    /* a refund past the state empties it: the bucket is full */

    reply = cmd("EVALSHA %s 3 s:lim s:tat s:tat:day r %s", tr.sha,
                "100 100000 100 43200000000");
    assert_int_equal(reply->integer, 2);
    freeReplyObject(reply);
    reply = cmd("EXISTS s:tat s:tat:day");
    assert_int_equal(reply->integer, 0);
    freeReplyObject(reply);

    /* bad arguments: the packed list must match the keys */

    reply = cmd("EVALSHA %s 3 s:lim s:tat s:tat:day c %s", tr.sha,
                "default 10 1 5 1");
    assert_int_equal(dify_gcra_parse_replies(reply, res, 2, NULL, NULL),
                     DIFY_REPLY_ERROR);
    freeReplyObject(reply);
    reply = cmd("EVALSHA %s 2 s:lim s:tat c %s", tr.sha,
                "default  10 1 5 1");
    assert_int_equal(reply->type, REDIS_REPLY_ERROR);
    freeReplyObject(reply);
    reply = cmd("EVALSHA %s 2 s:lim s:tat c %s", tr.sha,
                "de.fault 10 1 5 1");
    assert_int_equal(reply->type, REDIS_REPLY_ERROR);
    freeReplyObject(reply);

    /*
     * the script of the version before r/d reads a state with
     * tonumber() and floors what it owes: the TAT, not less
     */

    reply = cmd("EVALSHA %s 2 s:lim s:tat c %s", tr.sha,
                "default 1 86400 5 1");
    freeReplyObject(reply);
    reply = cmd("GET s:tat");
    tat0 = strtoll(reply->str, NULL, 10);
    freeReplyObject(reply);
    reply = cmd("EVAL %s 1 s:tat",
                "return string.format('%.0f', math.floor("
                "tonumber(redis.call('GET', KEYS[1]))))");
    assert_int_equal(reply->type, REDIS_REPLY_STRING);
    assert_int_equal(strtoll(reply->str, NULL, 10), tat0);
    freeReplyObject(reply);
}


static void
test_arguments(void **state)
{
    size_t               i;
    const char          *err;
    test_key_t           k;
    redisReply          *reply;
    dify_gcra_result_t   res;
    const char          *bad[][4] = {
        { "x", "1", "5", "1" }, { "10", "", "5", "1" },
        { "10", "1", "-5", "1" }, { "10", "1", "5", "1.5" },
        { "10", "1", "5", "-1" }, { " 10", "1", "5", "1" },
        { "1e3", "1", "5", "1" }, { "10", "1", "5", "0x1" }
    };

    (void) state;

    if (tr.missing) {
        skip();
    }

    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        reply = eval_raw("a:tat", "a:lim", bad[i][0], bad[i][1], bad[i][2],
                         bad[i][3]);
        err = NULL;
        assert_int_equal(dify_gcra_parse_reply(reply, &res, &err, NULL),
                         DIFY_REPLY_ERROR);
        assert_non_null(strstr(err, "bad arguments"));
        freeReplyObject(reply);
    }

    /* missing ARGV, wrong numkeys */

    reply = cmd("EVALSHA %s 2 a:lim a:tat c %s", tr.sha, "default 10 1 5");
    assert_int_equal(dify_gcra_parse_reply(reply, &res, NULL, NULL),
                     DIFY_REPLY_ERROR);
    freeReplyObject(reply);

    /* out of range: clamped as dify_gcra_decide() clamps */

    key_init(&k, "a:tat", "a:lim", lim(0, 0, 0));
    k.limit = lim(1, 1, 1);
    assert_int_equal(step(&k, 1, &res), DIFY_GCRA_ALLOWED);

    key_init(&k, "a2:tat", "a2:lim", lim(99999999, 99999999, 99999999));
    k.limit = lim(1000000, 86400, 1000000);
    assert_int_equal(step(&k, 1000000, &res), DIFY_GCRA_ALLOWED);
    assert_int_equal(res.reset, 86400000000ULL);

    /* r/d at the caps: 1 r/d, the burst capped to 41666 (tol < 3.6e15) */

    key_init(&k, "a4:tat", "a4:lim", lim(1, 86400, 1000000));
    k.limit = lim(1, 86400, 41666);
    assert_int_equal(step(&k, 41667, &res), DIFY_GCRA_NEVER);
    assert_int_equal(step(&k, 41666, &res), DIFY_GCRA_ALLOWED);
    assert_int_equal(res.reset, 41666ULL * 86400000000ULL);
    assert_int_equal(step(&k, 41666, &res), DIFY_GCRA_LIMITED);
    assert_true(res.retry <= 41666ULL * 86400000000ULL);
    assert_true(res.retry > 41666ULL * 86400000000ULL - 1000000);
    assert_int_equal(step(&k, 0, &res), DIFY_GCRA_ALLOWED);

    /* the largest tolerance: 1e6 units of 1 per hour, 3.6e15 us */

    key_init(&k, "a3:tat", "a3:lim", lim(1, 3600, 1000000));
    assert_int_equal(step(&k, 1000000, &res), DIFY_GCRA_ALLOWED);
    assert_int_equal(res.reset, 3600000000000000ULL);
    assert_int_equal(step(&k, 1, &res), DIFY_GCRA_LIMITED);
    assert_int_equal(step(&k, 0, &res), DIFY_GCRA_ALLOWED);
}


/*
 * Random sequences on two keys: random limits and overrides, costs
 * from 0 to burst + 1, short sleeps so that the clock moves across
 * intervals; every step is compared with dify_gcra_decide().
 */

static void
test_random_agreement(void **state)
{
    int                  i, n, kinds[3];
    size_t               j;
    uint64_t             cost;
    test_key_t           keys[2], *k;
    dify_gcra_verdict_e  v;
    const char          *rates[] = { "1000r/s", "500 r/s", "200/s",
                                     "6000/m", "bad", "3r/s" };
    const char          *bursts[] = { "1", "2", "4", "9", "x" };
    dify_gcra_limit_t    args[] = {
        { 1000, 1, 3 }, { 400, 1, 1 }, { 100, 1, 5 }, { 60000, 60, 2 }
    };

    (void) state;

    if (tr.missing) {
        skip();
    }

    srand(20240601);
    memset(kinds, 0, sizeof(kinds));

    key_init(&keys[0], "q0:tat", "q0:lim", args[0]);
    key_init(&keys[1], "q1:tat", "q1:lim", args[1]);

    n = 3000;

    for (i = 0; i < n; i++) {
        k = &keys[rand() % 2];

        switch (rand() % 40) {

        case 0:
            j = (size_t) rand() % (sizeof(args) / sizeof(args[0]));
            k->args = args[j];
            override(k, NULL, 0, NULL);
            break;

        case 1:
            j = (size_t) rand() % (sizeof(rates) / sizeof(rates[0]));
            override(k, rates[j], strlen(rates[j]),
                     rand() % 2 ? bursts[rand() % 5] : NULL);
            break;

        case 2:
            override(k, NULL, 0, NULL);
            break;

        case 3:
        case 4:
        case 5:
            msleep(rand() % 4);
            break;

        default:
            break;
        }

        cost = (uint64_t) rand() % (k->limit.burst + 2);
        v = step(k, cost, NULL);

        kinds[v == DIFY_GCRA_ALLOWED ? 0 : v == DIFY_GCRA_LIMITED ? 1 : 2]++;
    }

    print_message("# %d steps: %d allowed, %d limited, %d never\n",
                  n, kinds[0], kinds[1], kinds[2]);

    assert_true(kinds[0] > 100);
    assert_true(kinds[1] > 100);
    assert_true(kinds[2] > 10);
}


int
main(void)
{
    const struct CMUnitTest  tests[] = {
        cmocka_unit_test_setup(test_noscript, test_setup),
        cmocka_unit_test_setup(test_burst_exact, test_setup),
        cmocka_unit_test_setup(test_never, test_setup),
        cmocka_unit_test_setup(test_refill, test_setup),
        cmocka_unit_test_setup(test_expiry, test_setup),
        cmocka_unit_test_setup(test_overrides, test_setup),
        cmocka_unit_test_setup(test_blocked, test_setup),
        cmocka_unit_test_setup(test_foreign_state, test_setup),
        cmocka_unit_test_setup(test_arguments, test_setup),
        cmocka_unit_test_setup(test_several, test_setup),
        cmocka_unit_test_setup(test_random_agreement, test_setup),
    };

    return cmocka_run_group_tests_name("dify_gcra_redis", tests,
                                       group_setup, group_teardown);
}
