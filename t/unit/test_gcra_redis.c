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
 *
 * One call decides a batch of groups ("c", "d", "r"; see dify_gcra.h);
 * the single-group steps send one "c" group.  The batch tests end each
 * batch with a "c" group on a fresh probe key charged one unit of 1 s,
 * whose state is then exactly the batch's "now" + 1 s, and run the C
 * model group by group at that "now".
 */


#include <stdarg.h>
#include <inttypes.h>
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

/* batch_argv() sends numkeys 0, the keys in ARGV (a Cluster node's) */
static int           tb_undeclared;


/* two limits of one key, as test_several() sends them */
#define TEST_S2  "default 10 1 5 1 day 2 86400 1 1"


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


/*
 * A batch call in the making: the descriptor, KEYS and ARGV of one
 * EVALSHA, built group by group (the strings live in the pool).
 */

/* the node's largest batch, NGX_HTTP_DIFY_BATCH_MAX, and the probe */
#define TEST_MAX_GROUPS  65
#define TEST_MAX_KEYS    (TEST_MAX_GROUPS * (DIFY_GCRA_MAX_LIMITS + 1))
#define TEST_MAX_ARGS    (TEST_MAX_GROUPS * DIFY_GCRA_MAX_LIMITS * 5)

typedef struct {
    char                desc[2 * TEST_MAX_GROUPS + 1];
    size_t              ngroups;
    int                 ops[TEST_MAX_GROUPS];
    size_t              ns[TEST_MAX_GROUPS];
    size_t              nkeys;
    size_t              nargs;
    size_t              width;              /* of the expected reply */
    const char         *keys[TEST_MAX_KEYS];
    const char         *args[TEST_MAX_ARGS];
    char                pool[65536];
    size_t              used;
} test_batch_t;


static void
batch_init(test_batch_t *b)
{
    b->desc[0] = '\0';
    b->ngroups = 0;
    b->nkeys = 0;
    b->nargs = 0;
    b->width = 0;
    b->used = 0;
}


static const char *
batch_str(test_batch_t *b, const char *fmt, ...)
{
    int       n;
    char     *p;
    va_list   args;

    p = b->pool + b->used;

    va_start(args, fmt);
    n = vsnprintf(p, sizeof(b->pool) - b->used, fmt, args);
    va_end(args);

    assert_true(n >= 0 && (size_t) n < sizeof(b->pool) - b->used);
    b->used += (size_t) n + 1;

    return p;
}


/* a group's letter and digit; n is written as is (0 and 9 included) */

static void
batch_group(test_batch_t *b, int op, size_t n)
{
    size_t  len;

    assert_true(b->ngroups < TEST_MAX_GROUPS);

    len = strlen(b->desc);
    b->desc[len] = (char) op;
    b->desc[len + 1] = (char) ('0' + n);
    b->desc[len + 2] = '\0';

    b->ops[b->ngroups] = op;
    b->ns[b->ngroups] = n;
    b->ngroups++;
    b->width += dify_gcra_reply_width(op, n);
}


static void
batch_key(test_batch_t *b, const char *key)
{
    assert_true(b->nkeys < TEST_MAX_KEYS);
    b->keys[b->nkeys++] = batch_str(b, "%s", key);
}


static void
batch_arg(test_batch_t *b, const char *arg)
{
    assert_true(b->nargs < TEST_MAX_ARGS);
    b->args[b->nargs++] = batch_str(b, "%s", arg);
}


static void
batch_num(test_batch_t *b, uint64_t v)
{
    assert_true(b->nargs < TEST_MAX_ARGS);
    b->args[b->nargs++] = batch_str(b, "%llu", (unsigned long long) v);
}


/* "c" or "d": NAME RATE PERIOD BURST COST per limit, after the override */

static void
batch_charge(test_batch_t *b, int op, const char *okey, size_t n,
    const char **keys, const char **names, const dify_gcra_limit_t *limits,
    const uint64_t *costs)
{
    size_t  i;

    batch_group(b, op, n);
    batch_key(b, okey);

    for (i = 0; i < n; i++) {
        batch_key(b, keys[i]);
        batch_arg(b, names[i]);
        batch_num(b, limits[i].rate);
        batch_num(b, limits[i].period);
        batch_num(b, limits[i].burst);
        batch_num(b, costs[i]);
    }
}


static void
batch_c(test_batch_t *b, const char *okey, size_t n, const char **keys,
    const char **names, const dify_gcra_limit_t *limits,
    const uint64_t *costs)
{
    batch_charge(b, DIFY_GCRA_OP_CHARGE, okey, n, keys, names, limits, costs);
}


static void
batch_d(test_batch_t *b, const char *okey, size_t n, const char **keys,
    const char **names, const dify_gcra_limit_t *limits,
    const uint64_t *costs)
{
    batch_charge(b, DIFY_GCRA_OP_DEFAULT, okey, n, keys, names, limits,
                 costs);
}


/* "r": COST INTERVAL per state, after the override key */

static void
batch_r(test_batch_t *b, const char *okey, size_t n, const char **keys,
    const uint64_t *costs, const uint64_t *intervals)
{
    size_t  i;

    batch_group(b, DIFY_GCRA_OP_REFUND, n);
    batch_key(b, okey);

    for (i = 0; i < n; i++) {
        batch_key(b, keys[i]);
        batch_num(b, costs[i]);
        batch_num(b, intervals[i]);
    }
}


/* one "c" group of the limit "default", ARGV as strings */

static void
batch_c1(test_batch_t *b, const char *key, const char *okey,
    const char *rate, const char *period, const char *burst,
    const char *cost)
{
    batch_group(b, DIFY_GCRA_OP_CHARGE, 1);
    batch_key(b, okey);
    batch_key(b, key);
    batch_arg(b, "default");
    batch_arg(b, rate);
    batch_arg(b, period);
    batch_arg(b, burst);
    batch_arg(b, cost);
}


/*
 * EVALSHA sha numkeys KEYS... desc ARGV[2...], or with tb_undeclared
 * EVALSHA sha 0 desc KEYS... ARGV[2...]: argv has the room
 */

static int
batch_argv(test_batch_t *b, const char **argv)
{
    int     argc;
    size_t  i;

    argc = 0;
    argv[argc++] = "EVALSHA";
    argv[argc++] = tr.sha;

    if (tb_undeclared && b->nkeys > 0) {
        argv[argc++] = "0";
        argv[argc++] = b->desc;

        for (i = 0; i < b->nkeys; i++) {
            argv[argc++] = b->keys[i];
        }

        for (i = 0; i < b->nargs; i++) {
            argv[argc++] = b->args[i];
        }

        return argc;
    }

    argv[argc++] = batch_str(b, "%zu", b->nkeys);

    for (i = 0; i < b->nkeys; i++) {
        argv[argc++] = b->keys[i];
    }

    argv[argc++] = b->desc;

    for (i = 0; i < b->nargs; i++) {
        argv[argc++] = b->args[i];
    }

    return argc;
}


/* the caller frees the reply */

static redisReply *
batch_eval(test_batch_t *b)
{
    int           argc;
    redisReply   *reply;
    static const char  *argv[TEST_MAX_KEYS + TEST_MAX_ARGS + 4];

    argc = batch_argv(b, argv);
    reply = redisCommandArgv(tr.c, argc, argv, NULL);

    if (reply == NULL) {
        fail_msg("redis: %s", tr.c->errstr);
    }

    return reply;
}


static void
batch_append(test_batch_t *b)
{
    int                 argc;
    static const char  *argv[TEST_MAX_KEYS + TEST_MAX_ARGS + 4];

    argc = batch_argv(b, argv);
    (void) redisAppendCommandArgv(tr.c, argc, argv, NULL);
}


/* the count of an "r" group at element i of a batch's reply */

static long long
refunded(const redisReply *reply, size_t i)
{
    if (reply->type == REDIS_REPLY_ERROR) {
        fail_msg("script error: %s", reply->str);
    }

    assert_int_equal(reply->type, REDIS_REPLY_ARRAY);
    assert_true(i < reply->elements);
    assert_int_equal(reply->element[i]->type, REDIS_REPLY_INTEGER);

    return reply->element[i]->integer;
}


/* EVALSHA with ARGV as strings; the caller frees the reply */

static redisReply *
eval_raw(const char *key, const char *okey, const char *rate,
    const char *period, const char *burst, const char *cost)
{
    test_batch_t  b;

    batch_init(&b);
    batch_c1(&b, key, okey, rate, period, burst, cost);

    return batch_eval(&b);
}


/*
 * A batch in one MULTI/EXEC: DEL probe, TIME, EVALSHA, GET and
 * PEXPIRETIME of each key watched, TIME.  The batch ends with a "c"
 * group on the probe, a fresh key charged one unit of 1 s: its state is
 * then exactly now + 1 s, which gives the batch's own "now".
 */

#define TEST_PROBE      "t:probe"
#define TEST_MAX_WATCH  16

typedef struct {
    redisReply         *exec;
    redisReply         *reply;              /* the script's */
    int64_t             now;                /* the script's TIME */
    int64_t             t0, t1;             /* the TIMEs around it */
    redisReply         *get[TEST_MAX_WATCH];
    long long           pxat[TEST_MAX_WATCH];
} test_run_t;


static void
batch_run(test_batch_t *b, const char **keys, size_t n, test_run_t *run)
{
    size_t              i, cmds;
    char               *dot;
    int64_t             probe;
    redisReply         *r;
    dify_gcra_limit_t   second;
    uint64_t            one;

    assert_true(n <= TEST_MAX_WATCH);

    second = lim(1, 1, 1000000);
    one = 1;
    batch_c(b, TEST_PROBE ":lim", 1, (const char *[]) { TEST_PROBE },
            (const char *[]) { "default" }, &second, &one);

    (void) redisAppendCommand(tr.c, "MULTI");
    (void) redisAppendCommand(tr.c, "DEL %s", TEST_PROBE);
    (void) redisAppendCommand(tr.c, "TIME");
    batch_append(b);

    for (i = 0; i < n; i++) {
        (void) redisAppendCommand(tr.c, "GET %s", keys[i]);
        (void) redisAppendCommand(tr.c, "PEXPIRETIME %s", keys[i]);
    }

    (void) redisAppendCommand(tr.c, "GET %s", TEST_PROBE);
    (void) redisAppendCommand(tr.c, "TIME");
    (void) redisAppendCommand(tr.c, "EXEC");

    cmds = 5 + 2 * n;

    for (i = 0; i < cmds + 1; i++) {
        assert_int_equal(redisGetReply(tr.c, (void **) &r), REDIS_OK);
        freeReplyObject(r);
    }

    assert_int_equal(redisGetReply(tr.c, (void **) &run->exec), REDIS_OK);
    assert_int_equal(run->exec->type, REDIS_REPLY_ARRAY);
    assert_int_equal(run->exec->elements, cmds);

    run->t0 = time_us(run->exec->element[1]);
    run->reply = run->exec->element[2];

    if (run->reply->type == REDIS_REPLY_ERROR) {
        fail_msg("batch %s refused: %s", b->desc, run->reply->str);
    }

    assert_int_equal(run->reply->type, REDIS_REPLY_ARRAY);
    assert_int_equal(run->reply->elements, b->width);

    for (i = 0; i < n; i++) {
        run->get[i] = run->exec->element[3 + 2 * i];
        assert_int_equal(run->exec->element[4 + 2 * i]->type,
                         REDIS_REPLY_INTEGER);
        run->pxat[i] = run->exec->element[4 + 2 * i]->integer;
    }

    r = run->exec->element[3 + 2 * n];
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    probe = strtoll(r->str, &dot, 10);
    assert_string_equal(dot, ".00001000000");

    run->now = probe - 1000000;
    run->t1 = time_us(run->exec->element[4 + 2 * n]);

    assert_true(run->now >= run->t0 && run->now <= run->t1);
}


/*
 * One step, checked against dify_gcra_decide() on k->tat.  Returns the
 * verdict; *out (when not NULL) gets the parsed result.
 */

static dify_gcra_verdict_e
step(test_key_t *k, uint64_t cost, dify_gcra_result_t *out)
{
    int                 i;
    char               *colon;
    int64_t             t0, t1, now, tat, stored;
    int                 ends;
    uint64_t            t, tol, stored_iv;
    long long           when;
    redisReply         *exec, *r;
    const char         *err;
    test_batch_t        b;
    dify_gcra_state_t   st;
    dify_gcra_result_t  got, exp;

    batch_init(&b);
    batch_c(&b, k->okey, 1, &k->key, (const char *[]) { "default" },
            &k->args, &cost);

    (void) redisAppendCommand(tr.c, "MULTI");
    (void) redisAppendCommand(tr.c, "TIME");
    batch_append(&b);
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

    reply = cmd("EVAL %s 2 o k c1 default 10 1 5 1", dify_gcra_script);
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

    /*
     * a state of another type: not a crash; MGET reads it as absent
     * (since the batch script), so the key is charged as a full bucket
     * and the state written over it
     */

    cmd_ok("DEL f:tat");
    cmd_ok("HSET f:tat a b");
    k.tat = 0;
    k.iv = 0;
    assert_int_equal(step(&k, 1, &res), DIFY_GCRA_ALLOWED);
    assert_int_equal(res.remaining, 4);

    reply = cmd("TYPE f:tat");
    assert_string_equal(reply->str, "string");
    freeReplyObject(reply);

    /* an override of another type: the reply's own error */

    cmd_ok("DEL f:tat");
    cmd_ok("SET f:lim 1");

    reply = eval_raw("f:tat", "f:lim", "10", "1", "5", "1");
    err = NULL;
    len = 0;
    assert_int_equal(dify_gcra_parse_reply(reply, &res, &err, &len),
                     DIFY_REPLY_ERROR);
    assert_non_null(strstr(err, "WRONGTYPE"));
    assert_int_equal(len, strlen(err));
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

    reply = cmd("EVALSHA %s 3 s:lim s:tat s:tat:day c2 " TEST_S2, tr.sha);
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

    reply = cmd("EVALSHA %s 3 s:lim s:tat s:tat:day c2 " TEST_S2, tr.sha);
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
    reply = cmd("EVALSHA %s 3 s:lim s:tat s:tat:day c2 " TEST_S2, tr.sha);
    assert_int_equal(dify_gcra_parse_replies(reply, res, 2, NULL, NULL),
                     DIFY_REPLY_OK);
    assert_int_equal(dify_gcra_charged(res, 2), 1);
    assert_int_equal(res[1].limit.burst, 3);
    assert_int_equal(res[1].remaining, 1);
    freeReplyObject(reply);

    cmd_ok("HSET s:lim blocked 1");
    reply = cmd("EVALSHA %s 3 s:lim s:tat s:tat:day c2 " TEST_S2, tr.sha);
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

    reply = cmd("EVALSHA %s 3 s:lim s:tat s:tat:day r2 "
                "1 100000 1 43200000000", tr.sha);
    assert_int_equal(refunded(reply, 0), 2);
    freeReplyObject(reply);

    reply = cmd("GET s:tat:day");
    assert_int_equal(strtoll(reply->str, NULL, 10), tat1 - 43200000000LL);
    freeReplyObject(reply);

    /* a refund past the state empties it: the bucket is full */

    reply = cmd("EVALSHA %s 3 s:lim s:tat s:tat:day r2 "
                "100 100000 100 43200000000", tr.sha);
    assert_int_equal(refunded(reply, 0), 2);
    freeReplyObject(reply);
    reply = cmd("EXISTS s:tat s:tat:day");
    assert_int_equal(reply->integer, 0);
    freeReplyObject(reply);

    /* bad arguments: ARGV must match the descriptor, a name be a name */

    reply = cmd("EVALSHA %s 3 s:lim s:tat s:tat:day c2 default 10 1 5 1",
                tr.sha);
    assert_int_equal(dify_gcra_parse_replies(reply, res, 2, NULL, NULL),
                     DIFY_REPLY_ERROR);
    freeReplyObject(reply);
    reply = cmd("EVALSHA %s 2 s:lim s:tat c1 %s 10 1 5 1", tr.sha, "");
    assert_int_equal(reply->type, REDIS_REPLY_ERROR);
    freeReplyObject(reply);
    reply = cmd("EVALSHA %s 2 s:lim s:tat c1 de.fault 10 1 5 1", tr.sha);
    assert_int_equal(reply->type, REDIS_REPLY_ERROR);
    freeReplyObject(reply);

    /*
     * the script of the version before r/d reads a state with
     * tonumber() and floors what it owes: the TAT, not less
     */

    reply = cmd("EVALSHA %s 2 s:lim s:tat c1 default 1 86400 5 1", tr.sha);
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

    reply = cmd("EVALSHA %s 2 a:lim a:tat c1 default 10 1 5", tr.sha);
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


/* the batch: arguments */


/* the values and expiry times of keys, and the number of keys, in buf */

static void
snapshot(const char **keys, size_t n, char *buf, size_t size)
{
    size_t       i, len;
    redisReply  *v, *p;

    v = cmd("DBSIZE");
    len = (size_t) snprintf(buf, size, "%lld;", v->integer);
    freeReplyObject(v);

    for (i = 0; i < n; i++) {
        v = cmd("GET %s", keys[i]);
        p = cmd("PEXPIRETIME %s", keys[i]);

        assert_true(len < size);
        len += (size_t) snprintf(buf + len, size - len, "%s=%s@%lld;",
                                 keys[i],
                                 v->type == REDIS_REPLY_STRING ? v->str : "-",
                                 p->integer);
        freeReplyObject(v);
        freeReplyObject(p);
    }

    assert_true(len < size);
}


/* "c1r1d1": a charge, a refund and a charge of a key without override */

static void
batch_prefix(test_batch_t *b)
{
    uint64_t           one, iv;
    dify_gcra_limit_t  l;

    l = lim(10, 1, 5);
    one = 1;
    iv = 100000;

    batch_init(b);
    batch_c(b, "v:lim", 1, (const char *[]) { "v:a" },
            (const char *[]) { "default" }, &l, &one);
    batch_r(b, "v:lim", 1, (const char *[]) { "v:b" }, &one, &iv);
    batch_d(b, "v:none", 1, (const char *[]) { "v:c" },
            (const char *[]) { "default" }, &l, &one);
}


static void
expect_refused(test_batch_t *b, const char *why, const char *error,
    const char *before, const char **keys, size_t n)
{
    char         after[1024];
    redisReply  *reply;

    reply = batch_eval(b);

    if (reply->type != REDIS_REPLY_ERROR
        || strstr(reply->str, error) == NULL)
    {
        fail_msg("batch \"%s\" (%s) not refused: type %d %s", b->desc, why,
                 reply->type, reply->type == REDIS_REPLY_ERROR
                              ? reply->str : "");
    }

    freeReplyObject(reply);

    /* nothing written, nothing deleted */

    snapshot(keys, n, after, sizeof(after));

    if (strcmp(before, after) != 0) {
        fail_msg("batch \"%s\" (%s) refused, but wrote: %s -> %s",
                 b->desc, why, before, after);
    }
}


static void
test_batch_arguments(void **state)
{
    size_t               i, j, f, cases;
    uint64_t             two, three, costs[2];
    redisReply          *reply;
    test_batch_t         b;
    dify_gcra_limit_t    l, ls[2];
    char                 before[1024], after[1024];
    const char          *keys[] = { "v:a", "v:b", "v:c", "v:d", "v:lim",
                                    "v:str" };
    const char          *descs[] = {
        "", "c", "c1r1d1c", "c1r1d", "c1r1d1c1r",           /* odd */
        "c1r1x1", "c1r1D1", "C1r1d1", "c1r1 1", "c1R1d1",   /* unknown op */
        "c1r1k1",               /* "k", known limits, is gone: unknown */
        "c1r1d0", "c1r1d9", "c0r1d1", "c9r1d1",             /* n 0 or 9 */
        "c1r1dd", "c1r1d:", "c1r1d/", "c1r1d-",             /* not a digit */
        "c2r1d1", "c1r2d1", "c1r1d2", "c1d1", "c1r1d1c1",   /* counts */
        "c1d1r1"                /* the same counts, the values misplaced */
    };
    const char          *values[] = { "x", "", "-5", "1.5", " 10", "10 ",
                                      "1e3", "0x1", "+1", "-0" };
    const char          *names[] = { "de.fault", "", "a b", "a:b", "a\n" };

    (void) state;

    if (tr.missing) {
        skip();
    }

    /* states to keep: v:a and v:b owe, v:str is a string, v:lim a hash */

    l = lim(10, 1, 5);
    two = 2;
    three = 3;

    batch_init(&b);
    batch_c(&b, "v:lim", 1, (const char *[]) { "v:a" },
            (const char *[]) { "default" }, &l, &two);
    batch_d(&b, "v:none", 1, (const char *[]) { "v:b" },
            (const char *[]) { "default" }, &l, &three);
    reply = batch_eval(&b);
    assert_int_equal(reply->type, REDIS_REPLY_ARRAY);
    freeReplyObject(reply);

    cmd_ok("HSET v:lim rate 20/s");
    cmd_ok("SET v:str 1");

    /* the prefix itself passes (and is then undone) */

    snapshot(keys, 6, before, sizeof(before));

    batch_prefix(&b);
    reply = batch_eval(&b);
    assert_int_equal(reply->type, REDIS_REPLY_ARRAY);
    assert_int_equal(reply->elements, b.width);
    assert_int_equal(reply->elements, 7 + 1 + 7);
    freeReplyObject(reply);

    cmd_ok("DEL v:a v:b v:c");
    batch_init(&b);
    batch_c(&b, "v:lim", 1, (const char *[]) { "v:a" },
            (const char *[]) { "default" }, &l, &two);
    batch_d(&b, "v:none", 1, (const char *[]) { "v:b" },
            (const char *[]) { "default" }, &l, &three);
    reply = batch_eval(&b);
    freeReplyObject(reply);

    snapshot(keys, 6, before, sizeof(before));
    cases = 0;

    /* a malformed descriptor, with the prefix's KEYS and ARGV */

    for (i = 0; i < sizeof(descs) / sizeof(descs[0]); i++) {
        batch_prefix(&b);
        strcpy(b.desc, descs[i]);
        expect_refused(&b, "descriptor", "bad arguments", before, keys, 6);
        cases++;
    }

    /* KEYS or ARGV one short, or one too many */

    batch_prefix(&b);
    b.nkeys--;
    expect_refused(&b, "a key short", "bad arguments", before, keys, 6);

    batch_prefix(&b);
    batch_key(&b, "v:d");
    expect_refused(&b, "a key too many", "bad arguments", before, keys, 6);

    batch_prefix(&b);
    b.nargs--;
    expect_refused(&b, "an argument short", "bad arguments", before,
                   keys, 6);

    batch_prefix(&b);
    batch_arg(&b, "1");
    expect_refused(&b, "an argument too many", "bad arguments", before,
                   keys, 6);

    batch_prefix(&b);
    b.nargs = 0;
    expect_refused(&b, "no argument but the descriptor", "bad arguments",
                   before, keys, 6);

    cases += 5;

    /* no ARGV at all */

    reply = cmd("EVALSHA %s 2 v:lim v:a", tr.sha);
    assert_int_equal(reply->type, REDIS_REPLY_ERROR);
    assert_non_null(strstr(reply->str, "bad arguments"));
    freeReplyObject(reply);
    cases++;

    /*
     * a non-numeric value in the last group, after groups that were
     * decided already: the whole batch is refused, nothing written
     */

    for (i = 0; i < sizeof(values) / sizeof(values[0]); i++) {

        for (f = 0; f < 8; f++) {
            batch_prefix(&b);
            batch_group(&b, f < 4 ? DIFY_GCRA_OP_CHARGE
                                  : DIFY_GCRA_OP_DEFAULT, 1);
            batch_key(&b, "v:lim");
            batch_key(&b, "v:d");
            batch_arg(&b, "default");

            for (j = 0; j < 4; j++) {
                batch_arg(&b, j == f % 4 ? values[i] : "10");
            }

            expect_refused(&b, "c, d: not a number", "bad arguments",
                           before, keys, 6);
            cases++;
        }
    }

    /* a bad name in the second limit of a group */

    for (i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        batch_prefix(&b);
        ls[0] = l;
        ls[1] = l;
        costs[0] = 1;
        costs[1] = 1;
        batch_c(&b, "v:lim", 2, (const char *[]) { "v:d", "v:c" },
                (const char *[]) { "default", names[i] }, ls, costs);
        expect_refused(&b, "c: a bad name", "bad arguments", before,
                       keys, 6);
        batch_prefix(&b);
        batch_d(&b, "v:none", 2, (const char *[]) { "v:d", "v:c" },
                (const char *[]) { "default", names[i] }, ls, costs);
        expect_refused(&b, "d: a bad name", "bad arguments", before,
                       keys, 6);
        cases += 2;
    }

    /* an override of another type: its error, nothing written either */

    batch_prefix(&b);
    batch_c(&b, "v:str", 1, (const char *[]) { "v:d" },
            (const char *[]) { "default" }, &l, &two);
    expect_refused(&b, "c: override not a hash", "WRONGTYPE", before,
                   keys, 6);

    /* the same for a "d": the EXISTS finds it, the HMGET fails */

    batch_prefix(&b);
    batch_d(&b, "v:str", 1, (const char *[]) { "v:d" },
            (const char *[]) { "default" }, &l, &two);
    expect_refused(&b, "d: override not a hash", "WRONGTYPE", before,
                   keys, 6);
    cases += 2;

    print_message("# %zu malformed batches refused, none wrote\n", cases);

    /*
     * an "r" with a value that is not a number gives nothing back (as
     * the script before batches did): not an error, the state kept
     */

    batch_init(&b);
    batch_group(&b, DIFY_GCRA_OP_REFUND, 1);
    batch_key(&b, "v:lim");
    batch_key(&b, "v:a");
    batch_arg(&b, "x");
    batch_arg(&b, "100000");
    batch_group(&b, DIFY_GCRA_OP_REFUND, 1);
    batch_key(&b, "v:lim");
    batch_key(&b, "v:b");
    batch_arg(&b, "1");
    batch_arg(&b, "0");
    reply = batch_eval(&b);
    assert_int_equal(refunded(reply, 0), 0);
    assert_int_equal(refunded(reply, 1), 0);
    freeReplyObject(reply);

    snapshot(keys, 6, after, sizeof(after));
    assert_string_equal(before, after);
}


/*
 * The batch against the C model: random batches of 1 to 40 groups of
 * "c", "d" and "r" over 6 states (so that a state comes back within a
 * batch) and 4 overrides (2 never set, so that the "d" groups of some
 * batches have none at all), 1 to 4 limits a group, costs from 0 to
 * burst + 1, random overrides and old-style bare states; the model
 * applies dify_gcra_decide_all() and dify_gcra_refund() group by group
 * in order at the batch's own "now"; every field of the reply and
 * every state after the batch (value and PXAT) must be the model's.
 */

#define TEST_DKEYS   6
#define TEST_DOKEYS  4                      /* d:o2, d:o3: never set */
#define TEST_DNAMES  4

typedef struct {
    const char         *key;
    int64_t             tat;                /* the model, 0: none */
    uint64_t            iv;
    char                value[48];          /* in Redis until it expires */
    long long           pxat;               /* -2: none, -1: no expiry */
    int                 dirty;              /* written by this batch */
    dify_gcra_limit_t   home;               /* its usual limit */
} test_dstate_t;

typedef struct {
    const char         *key;
    int                 present;            /* the hash exists */
    int                 blocked;
    const char         *rate[TEST_DNAMES];
    const char         *burst[TEST_DNAMES];
} test_dover_t;


static const char  *dnames[TEST_DNAMES] = { "default", "a", "b", "c" };


static dify_gcra_limit_t
dover_limit(const test_dover_t *o, size_t m, dify_gcra_limit_t l)
{
    uint64_t  r, p, b;

    if (o->rate[m] != NULL
        && dify_gcra_parse_rate((const unsigned char *) o->rate[m],
                                strlen(o->rate[m]), &r, &p) == 0)
    {
        l.rate = r;
        l.period = p;
        l.burst = r;
    }

    if (o->burst[m] != NULL && burst_field(o->burst[m], &b) == 0) {
        l.burst = b;
    }

    return l;
}


/* present 0: no hash at all (as most keys, whose groups are "d") */

static void
dover_set(test_dover_t *o, int present, int blocked, size_t m,
    const char *rate, const char *burst)
{
    size_t  i;

    cmd_ok("DEL %s", o->key);

    o->present = present;
    o->blocked = present && blocked;

    for (i = 0; i < TEST_DNAMES; i++) {
        o->rate[i] = NULL;
        o->burst[i] = NULL;
    }

    if (!present) {
        return;
    }

    o->rate[m] = rate;
    o->burst[m] = burst;

    if (blocked) {
        cmd_ok("HSET %s blocked 1", o->key);

    } else {
        cmd_ok("HSET %s blocked 0", o->key);
    }

    if (rate != NULL) {
        cmd_ok("HSET %s %s%srate %s", o->key, m ? dnames[m] : "",
               m ? "." : "", rate);
    }

    if (burst != NULL) {
        cmd_ok("HSET %s %s%sburst %s", o->key, m ? dnames[m] : "",
               m ? "." : "", burst);
    }
}


/* what the model's state is after a group wrote it */

static void
dstate_store(test_dstate_t *s, const dify_gcra_state_t *st, int64_t now)
{
    s->dirty = 1;

    if (st->tat <= now) {
        s->tat = 0;
        s->iv = 0;
        s->value[0] = '\0';
        s->pxat = -2;
        return;
    }

    s->tat = st->tat;
    s->iv = st->interval;
    snprintf(s->value, sizeof(s->value), "%lld.%011llu",
             (long long) st->tat, (unsigned long long) st->interval);
    s->pxat = (st->tat + 999) / 1000;
}


static void
expect_same(const dify_gcra_result_t *got, const dify_gcra_result_t *exp,
    const test_batch_t *b, size_t g, size_t i, int64_t now)
{
    if (got->verdict == exp->verdict
        && got->limit.rate == exp->limit.rate
        && got->limit.period == exp->limit.period
        && got->limit.burst == exp->limit.burst
        && got->remaining == exp->remaining
        && got->reset == exp->reset
        && got->retry == exp->retry)
    {
        return;
    }

    fail_msg("batch %s, group %zu, limit %zu, now %lld: "
             "redis %d %llu/%llu/%llu %llu %llu %llu, "
             "model %d %llu/%llu/%llu %llu %llu %llu",
             b->desc, g, i, (long long) now, got->verdict,
             (unsigned long long) got->limit.rate,
             (unsigned long long) got->limit.period,
             (unsigned long long) got->limit.burst,
             (unsigned long long) got->remaining,
             (unsigned long long) got->reset,
             (unsigned long long) got->retry, exp->verdict,
             (unsigned long long) exp->limit.rate,
             (unsigned long long) exp->limit.period,
             (unsigned long long) exp->limit.burst,
             (unsigned long long) exp->remaining,
             (unsigned long long) exp->reset,
             (unsigned long long) exp->retry);
}


/* each state after the batch: the model's value and PXAT */

static void
expect_states(test_dstate_t *ds, const test_run_t *run,
    const test_batch_t *b)
{
    size_t              j;
    const redisReply   *v;

    for (j = 0; j < TEST_DKEYS; j++) {
        v = run->get[j];

        if (ds[j].tat > run->now) {

            if (v->type == REDIS_REPLY_STRING
                && strcmp(v->str, ds[j].value) == 0
                && run->pxat[j] == ds[j].pxat)
            {
                continue;
            }

            /* written, and expired within the EXEC: only when so close */

            if (v->type == REDIS_REPLY_NIL && ds[j].pxat >= 0
                && ds[j].pxat * 1000 <= run->t1)
            {
                continue;
            }

        } else if (ds[j].dirty) {

            /* emptied by this batch: deleted */

            if (v->type == REDIS_REPLY_NIL && run->pxat[j] == -2) {
                continue;
            }

        } else {

            /* full, untouched: gone, or what was written, not expired yet */

            if (v->type == REDIS_REPLY_NIL && run->pxat[j] == -2) {
                continue;
            }

            if (v->type == REDIS_REPLY_STRING
                && strcmp(v->str, ds[j].value) == 0
                && run->pxat[j] == ds[j].pxat)
            {
                continue;
            }
        }

        fail_msg("batch %s, now %lld: %s is \"%s\" @%lld, model %lld.%llu "
                 "\"%s\" @%lld%s", b->desc, (long long) run->now,
                 ds[j].key, v->type == REDIS_REPLY_STRING ? v->str : "(nil)",
                 run->pxat[j], (long long) ds[j].tat,
                 (unsigned long long) ds[j].iv, ds[j].value, ds[j].pxat,
                 ds[j].dirty ? " (written)" : "");
    }
}


static void
test_batch_random(void **state)
{
    int                  op, k, dup, pick[TEST_DKEYS], counts[4];
    size_t               i, j, m, g, n, batches, groups[3], limits,
                         repeats, refunds, off, ng, dbatches[2];
    int64_t              last;
    uint64_t             costs[DIFY_GCRA_MAX_LIMITS];
    uint64_t             ivs[DIFY_GCRA_MAX_LIMITS];
    test_run_t           run;
    test_batch_t         b;
    test_dover_t         dov[TEST_DOKEYS], *o;
    test_dstate_t        ds[TEST_DKEYS];
    const char          *err, *watch[TEST_DKEYS];
    const char          *keys[DIFY_GCRA_MAX_LIMITS];
    const char          *names[DIFY_GCRA_MAX_LIMITS];
    long long            count;
    int                  has_d, d_over;
    dify_gcra_state_t    st[DIFY_GCRA_MAX_LIMITS];
    dify_gcra_limit_t    ls[DIFY_GCRA_MAX_LIMITS];
    dify_gcra_result_t   got[DIFY_GCRA_MAX_LIMITS];
    dify_gcra_result_t   exp[DIFY_GCRA_MAX_LIMITS];
    int                  gk[TEST_MAX_GROUPS][DIFY_GCRA_MAX_LIMITS];
    int                  go[TEST_MAX_GROUPS];
    uint64_t             gc[TEST_MAX_GROUPS][DIFY_GCRA_MAX_LIMITS];
    uint64_t             gi[TEST_MAX_GROUPS][DIFY_GCRA_MAX_LIMITS];
    dify_gcra_limit_t    gl[TEST_MAX_GROUPS][DIFY_GCRA_MAX_LIMITS];
    size_t               gm[TEST_MAX_GROUPS][DIFY_GCRA_MAX_LIMITS];
    const char          *rates[] = { "1000r/s", "500 r/s", "200/s",
                                     "6000/m", "bad", "3r/s", "7/h" };
    const char          *bursts[] = { "1", "2", "4", "9", "x" };
    const char          *okeys[TEST_DOKEYS] = { "d:o0", "d:o1", "d:o2",
                                                "d:o3" };
    const char          *skeys[TEST_DKEYS] = { "d:0", "d:1", "d:2", "d:3",
                                               "d:4", "d:5" };
    dify_gcra_limit_t    pool[] = {
        { 1000, 1, 3 }, { 400, 1, 1 }, { 100, 1, 5 }, { 60000, 60, 2 },
        { 1, 60, 3 }, { 200, 1, 10 }, { 3, 1, 2 }, { 7, 1, 4 }
    };

    (void) state;

    if (tr.missing) {
        skip();
    }

    srand(20261201);
    memset(counts, 0, sizeof(counts));
    memset(groups, 0, sizeof(groups));
    memset(dbatches, 0, sizeof(dbatches));
    limits = 0;
    repeats = 0;
    refunds = 0;

    for (j = 0; j < TEST_DKEYS; j++) {
        ds[j].key = skeys[j];
        ds[j].tat = 0;
        ds[j].iv = 0;
        ds[j].value[0] = '\0';
        ds[j].pxat = -2;
        ds[j].home = pool[j];
        watch[j] = skeys[j];
    }

    for (j = 0; j < TEST_DOKEYS; j++) {
        dov[j].key = okeys[j];
        dover_set(&dov[j], 0, 0, 0, NULL, NULL);
    }

    last = 0;
    batches = 300;

    for (i = 0; i < batches; i++) {

        /* between batches: overrides, bare states, the clock */

        switch (rand() % 10) {

        case 0:
        case 1:
            o = &dov[rand() % 2];
            m = (size_t) rand() % TEST_DNAMES;
            dover_set(o, 1, rand() % 6 == 0, m,
                      rand() % 3 ? rates[rand() % 7] : NULL,
                      rand() % 2 ? bursts[rand() % 5] : NULL);
            break;

        case 2:
        case 3:
            dover_set(&dov[rand() % 2], 0, 0, 0, NULL, NULL);
            break;

        case 4:
            if (last != 0) {
                j = (size_t) rand() % TEST_DKEYS;
                ds[j].tat = last + rand() % 50000;
                ds[j].iv = 0;
                snprintf(ds[j].value, sizeof(ds[j].value), "%lld",
                         (long long) ds[j].tat);
                ds[j].pxat = -1;
                cmd_ok("SET %s %s", ds[j].key, ds[j].value);
            }
            break;

        case 5:
        case 6:
            msleep(rand() % 3);
            break;

        default:
            break;
        }

        /* the batch */

        batch_init(&b);
        ng = 1 + (size_t) rand() % 40;
        has_d = 0;
        d_over = 0;

        for (j = 0; j < TEST_DKEYS; j++) {
            ds[j].dirty = 0;
            pick[j] = 0;
        }

        for (g = 0; g < ng; g++) {
            op = rand() % 20;
            op = op < 7 ? DIFY_GCRA_OP_CHARGE
                 : op < 15 ? DIFY_GCRA_OP_DEFAULT : DIFY_GCRA_OP_REFUND;
            n = 1 + (size_t) rand() % 4;
            go[g] = rand() % 5 < 2 ? rand() % 2 : 2 + rand() % 2;

            /* mostly none: a batch's "d" groups often have none at all */

            if (op == DIFY_GCRA_OP_DEFAULT && rand() % 3) {
                go[g] = 2 + rand() % 2;
            }

            if (op == DIFY_GCRA_OP_DEFAULT) {
                has_d = 1;
                d_over |= dov[go[g]].present;
            }

            /* n distinct states */

            for (j = 0; j < n; j++) {

                do {
                    k = rand() % TEST_DKEYS;
                    dup = 0;

                    for (m = 0; m < j; m++) {
                        dup |= (gk[g][m] == k);
                    }

                } while (dup);

                gk[g][j] = k;
                repeats += (pick[k] != 0);
                pick[k] = 1;
                keys[j] = skeys[k];

                gl[g][j] = rand() % 5 ? ds[k].home : pool[rand() % 8];
                gm[g][j] = (size_t) rand() % TEST_DNAMES;
                names[j] = dnames[gm[g][j]];
                ls[j] = dover_limit(&dov[go[g]], gm[g][j], gl[g][j]);

                gc[g][j] = (uint64_t) rand() % (ls[j].burst + 2);

                if (op == DIFY_GCRA_OP_REFUND) {
                    gc[g][j] = (uint64_t) rand() % 4;
                    gi[g][j] = dify_gcra_interval(&gl[g][j]);
                }

                costs[j] = gc[g][j];
                ivs[j] = gi[g][j];
            }

            if (op == DIFY_GCRA_OP_REFUND) {
                batch_r(&b, dov[go[g]].key, n, keys, costs, ivs);

            } else {
                batch_charge(&b, op, dov[go[g]].key, n, keys, names, gl[g],
                             costs);
            }
        }

        if (has_d) {
            dbatches[d_over]++;
        }

        batch_run(&b, watch, TEST_DKEYS, &run);

        /* the model, group by group, at the batch's "now" */

        off = 0;

        for (g = 0; g < ng; g++) {
            op = b.ops[g];
            n = b.ns[g];
            groups[op == DIFY_GCRA_OP_CHARGE ? 0
                   : op == DIFY_GCRA_OP_DEFAULT ? 1 : 2]++;
            limits += n;

            for (j = 0; j < n; j++) {
                st[j].tat = ds[gk[g][j]].tat;
                st[j].interval = ds[gk[g][j]].iv;
                ls[j] = dover_limit(&dov[go[g]], gm[g][j], gl[g][j]);
            }

            err = NULL;

            if (dify_gcra_parse_group(run.reply->element + off, op, n, got,
                                      &err)
                != DIFY_REPLY_OK)
            {
                fail_msg("batch %s, group %zu: reply rejected: %s",
                         b.desc, g, err);
            }

            if (op == DIFY_GCRA_OP_REFUND) {
                count = 0;

                for (j = 0; j < n; j++) {
                    if (st[j].tat <= run.now) {
                        continue;
                    }

                    count++;
                    (void) dify_gcra_refund(&st[j], run.now, gc[g][j],
                                            gi[g][j]);
                    dstate_store(&ds[gk[g][j]], &st[j], run.now);
                }

                refunds += (size_t) count;

                if (run.reply->element[off]->integer != count) {
                    fail_msg("batch %s, group %zu: redis gave back to %lld,"
                             " the model to %lld", b.desc, g,
                             run.reply->element[off]->integer, count);
                }

            } else {
                if (dify_gcra_decide_all(st, run.now, ls, gc[g], n,
                                         dov[go[g]].blocked, exp))
                {
                    for (j = 0; j < n; j++) {
                        dstate_store(&ds[gk[g][j]], &st[j], run.now);
                    }
                }

                for (j = 0; j < n; j++) {
                    expect_same(&got[j], &exp[j], &b, g, j, run.now);
                    counts[exp[j].verdict + 2]++;
                }
            }

            off += dify_gcra_reply_width(op, n);
        }

        expect_states(ds, &run, &b);

        last = run.now;
        freeReplyObject(run.exec);
    }

    print_message("# %zu batches, %zu groups (%zu c, %zu d, %zu r), "
                  "%zu limits (%zu on a state met earlier in their batch); "
                  "%d allowed, %d limited, %d never, %d blocked, "
                  "%zu given back; of the batches with \"d\" groups, "
                  "%zu found no override of them, %zu one\n", batches,
                  groups[0] + groups[1] + groups[2], groups[0], groups[1],
                  groups[2], limits, repeats, counts[3], counts[2],
                  counts[0], counts[1], refunds, dbatches[0], dbatches[1]);

    assert_true(counts[3] > 500);
    assert_true(counts[2] > 500);
    assert_true(counts[0] > 50);
    assert_true(counts[1] > 50);
    assert_true(refunds > 100);
    assert_true(dbatches[0] > 20);
    assert_true(dbatches[1] > 20);
}

/*
 * The same differential with numkeys 0, the keys in ARGV: the reads
 * are then one MGET per override key's hash tag and one EXISTS per "d"
 * override (what a Cluster node's batch runs), the decisions the same.
 */

static void
test_batch_random_undeclared(void **state)
{
    tb_undeclared = 1;
    test_batch_random(state);
    tb_undeclared = 0;
}


/*
 * One batch, sent once with its keys declared and once with numkeys 0,
 * on two twin key sets (fresh states, the same overrides): the replies
 * are equal element by element, and so are the states written, relative
 * to each call's own "now" (a fresh state decides the same at any time).
 * Several hash tags, the same key in several groups, "c", "d" (with an
 * override and without) and "r" groups.
 */

#define TEST_UWATCH  12                     /* 4 tags, 3 states */

static void
undeclared_batch(test_batch_t *b, const char *set)
{
    size_t              g, i;
    uint64_t            costs[3], ivs[3];
    const char         *keys[3], *names[3];
    dify_gcra_limit_t   ls[3];
    static const char  *tags[] = { "t1", "t2", "t3", "t4" };

    batch_init(b);

    ls[0] = lim(10, 1, 5);
    ls[1] = lim(100, 60, 20);
    ls[2] = lim(3, 1, 2);
    names[0] = "default";
    names[1] = "x";
    names[2] = "y";

    for (g = 0; g < 12; g++) {
        const char  *tag = tags[g % 4];
        const char  *okey = batch_str(b, "%s:{%s}:limit", set, tag);

        keys[0] = batch_str(b, "%s:{%s}:tat", set, tag);
        keys[1] = batch_str(b, "%s:{%s}:tat:x", set, tag);
        keys[2] = batch_str(b, "%s:{%s}:tat:y", set, tag);

        for (i = 0; i < 3; i++) {
            costs[i] = 1 + (g + i) % 3;
            ivs[i] = dify_gcra_interval(&ls[i]);
        }

        if (g % 5 == 4) {
            batch_r(b, okey, 1 + g % 3, keys, costs, ivs);

        } else if (g % 2) {
            batch_d(b, okey, 1 + g % 3, keys, names, ls, costs);

        } else {
            batch_c(b, okey, 1 + g % 3, keys, names, ls, costs);
        }
    }
}


static void
test_batch_undeclared(void **state)
{
    size_t              i, j, set;
    char               *dot;
    int64_t             tat[2][TEST_UWATCH];
    long long           pxat[2][TEST_UWATCH];
    const char         *iv[2][TEST_UWATCH];
    test_run_t          run[2];
    test_batch_t       *b[2];
    const char         *watch[TEST_UWATCH];
    static const char  *sets[] = { "ua", "ub" };
    static const char  *suffix[] = { "", ":x", ":y" };

    (void) state;

    if (tr.missing) {
        skip();
    }

    for (set = 0; set < 2; set++) {
        cmd_ok("HSET %s:{t2}:limit x.rate 50/s x.burst 3", sets[set]);
        cmd_ok("HSET %s:{t3}:limit rate 4r/s", sets[set]);

        b[set] = malloc(sizeof(test_batch_t));
        assert_non_null(b[set]);

        undeclared_batch(b[set], sets[set]);

        for (i = 0; i < TEST_UWATCH; i++) {
            watch[i] = batch_str(b[set], "%s:{t%zu}:tat%s", sets[set],
                                 i / 3 + 1, suffix[i % 3]);
        }

        tb_undeclared = (int) set;
        batch_run(b[set], watch, TEST_UWATCH, &run[set]);
        tb_undeclared = 0;

        for (i = 0; i < TEST_UWATCH; i++) {
            if (run[set].get[i]->type != REDIS_REPLY_STRING) {
                tat[set][i] = -1;
                iv[set][i] = "";
                pxat[set][i] = run[set].pxat[i];
                continue;
            }

            tat[set][i] = strtoll(run[set].get[i]->str, &dot, 10)
                          - run[set].now;
            iv[set][i] = dot;
            pxat[set][i] = run[set].pxat[i] - (run[set].now + 999) / 1000;
        }
    }

    assert_int_equal(run[0].reply->elements, run[1].reply->elements);

    for (j = 0; j < run[0].reply->elements; j++) {
        assert_int_equal(run[0].reply->element[j]->type,
                         REDIS_REPLY_INTEGER);
        assert_int_equal(run[1].reply->element[j]->type,
                         REDIS_REPLY_INTEGER);
        assert_int_equal(run[0].reply->element[j]->integer,
                         run[1].reply->element[j]->integer);
    }

    for (i = 0; i < TEST_UWATCH; i++) {
        assert_int_equal(tat[0][i], tat[1][i]);
        assert_string_equal(iv[0][i], iv[1][i]);

        /* PXAT rounds up the absolute TAT: within a millisecond */
        assert_true(pxat[0][i] - pxat[1][i] <= 1
                    && pxat[1][i] - pxat[0][i] <= 1);
    }

    /* the batch charged every tag's default state */

    for (i = 0; i < 4; i++) {
        assert_true(tat[0][3 * i] > 0);
    }

    for (set = 0; set < 2; set++) {
        freeReplyObject(run[set].exec);
        free(b[set]);
    }
}


/*
 * "d" decides exactly as "c": the same reply fields, the same states
 * (value and PXAT), on twin keys under twin overrides in one batch;
 * whether the batch's "d" groups have no override at all (the EXISTS
 * finds none, no HMGET), or one of them has one (every "d" group reads
 * its own, present or not).
 */

static void
expect_twins(const test_run_t *run, size_t n)
{
    size_t             i;
    const redisReply  *c, *k;

    for (i = 0; i < n; i++) {
        c = run->get[i];
        k = run->get[n + i];

        assert_int_equal(c->type, k->type);

        if (c->type == REDIS_REPLY_STRING) {
            assert_string_equal(c->str, k->str);
        }

        assert_int_equal(run->pxat[i], run->pxat[n + i]);
    }
}


/* the same override on both twins, or none */

static void
twin_override(int present, const char *field, const char *value)
{
    cmd_ok("DEL kc:lim kd:lim");

    if (present) {
        cmd_ok("HSET kc:lim %s %s", field, value);
        cmd_ok("HSET kd:lim %s %s", field, value);
    }
}


static void
test_batch_default(void **state)
{
    int                  kinds[4], other;
    size_t               i, j, n, p, f, runs[2];
    uint64_t             costs[3], one;
    test_run_t           run;
    test_batch_t         b;
    dify_gcra_limit_t    ls[3], nl;
    dify_gcra_result_t   rc[3], rd[3];
    const char          *err;
    const char          *ckeys[] = { "kc:0", "kc:1", "kc:2" };
    const char          *dkeys[] = { "kd:0", "kd:1", "kd:2" };
    const char          *watch[] = { "kc:0", "kc:1", "kc:2",
                                     "kd:0", "kd:1", "kd:2" };
    const char          *dnm[] = { "default", "a", "b" };
    dify_gcra_limit_t    pool[] = {
        { 10, 1, 5 }, { 1000, 1, 3 }, { 1, 60, 3 }, { 3, 1, 2 },
        { 7, 1, 4 }, { 400, 1, 1 }, { 0, 0, 0 }, { 2, 1, 0 },
        { 99999999, 99999999, 99999999 }, { 1, 86400, 1000000 },
        { 1, 3600, 1000000 }, { 1000000, 1, 1000000 }
    };
    const char          *fields[][2] = {
        { "rate", "100/s" }, { "burst", "2" }, { "a.rate", "3/m" },
        { "b.burst", "1" }, { "blocked", "1" }, { "blocked", "0" },
        { "rate", "bad" }, { "a.burst", "7" }
    };

    (void) state;

    if (tr.missing) {
        skip();
    }

    srand(20261202);
    memset(kinds, 0, sizeof(kinds));
    memset(runs, 0, sizeof(runs));
    one = 1;

    /* kx:lim, another key's override, there for the EXISTS to find */

    cmd_ok("HSET kx:lim burst 3");

    for (i = 0; i < 400; i++) {
        n = 1 + (size_t) rand() % 3;

        for (j = 0; j < n; j++) {
            p = (size_t) rand() % (sizeof(pool) / sizeof(pool[0]));
            ls[j] = pool[p];
            dify_gcra_normalize(&ls[j], &nl);
            costs[j] = rand() % 4 ? (uint64_t) rand() % (nl.burst + 2)
                                  : nl.burst + (uint64_t) (rand() % 2);
        }

        switch (rand() % 10) {

        case 0:
            f = (size_t) rand() % (sizeof(fields) / sizeof(fields[0]));
            twin_override(1, fields[f][0], fields[f][1]);
            break;

        case 1:
        case 2:
            twin_override(0, NULL, NULL);
            break;

        case 3:
            msleep(rand() % 3);
            break;

        default:
            break;
        }

        other = rand() % 2;

        batch_init(&b);
        batch_c(&b, "kc:lim", n, ckeys, dnm, ls, costs);
        batch_d(&b, "kd:lim", n, dkeys, dnm, ls, costs);

        if (other) {
            batch_d(&b, "kx:lim", 1, (const char *[]) { "kx:0" }, dnm, ls,
                    &one);
        }

        /* the twins are watched in the same order: kc:j, then kd:j */

        for (j = 0; j < n; j++) {
            watch[j] = ckeys[j];
            watch[n + j] = dkeys[j];
        }

        batch_run(&b, watch, 2 * n, &run);

        runs[other]++;

        err = NULL;
        assert_int_equal(dify_gcra_parse_group(run.reply->element,
                                               DIFY_GCRA_OP_CHARGE, n,
                                               rc, &err),
                         DIFY_REPLY_OK);
        assert_int_equal(dify_gcra_parse_group(run.reply->element + 7 * n,
                                               DIFY_GCRA_OP_DEFAULT, n,
                                               rd, &err),
                         DIFY_REPLY_OK);

        for (j = 0; j < n; j++) {
            expect_same(&rd[j], &rc[j], &b, 1, j, run.now);
            kinds[rc[j].verdict + 2]++;
        }

        expect_twins(&run, n);
        freeReplyObject(run.exec);
    }

    print_message("# 400 twin batches (%zu with another key's override): "
                  "%d allowed, %d limited, %d never, %d blocked\n",
                  runs[1], kinds[3], kinds[2], kinds[0], kinds[1]);

    assert_true(kinds[3] > 100);
    assert_true(kinds[2] > 100);
    assert_true(kinds[0] > 20);
    assert_true(kinds[1] > 10);
    assert_true(runs[0] > 100 && runs[1] > 100);
}


/*
 * A blocked override blocks the "c" and "d" groups that read it, "d"
 * too when it is the only override of the batch's "d" groups (the
 * EXISTS finds it); "r" groups on the same state, and groups under
 * another override or none, decide in the same batch as if it were not
 * there.
 */

static void
test_batch_blocked(void **state)
{
    uint64_t             one, two, iv, cs[2];
    test_run_t           run;
    test_batch_t         b;
    dify_gcra_limit_t    l, ls[2];
    dify_gcra_result_t   res[2];
    const char          *err;
    const char          *dnm[] = { "default", "day" };
    const char          *watch[] = { "bk:a", "bk:b", "bk:c", "bk:d",
                                     "bk:e" };

    (void) state;

    if (tr.missing) {
        skip();
    }

    cmd_ok("HSET bk:lim blocked 1 rate 7/m burst 9");

    l = lim(10, 1, 5);
    ls[0] = l;
    ls[1] = l;
    one = 1;
    two = 2;
    cs[0] = 1;
    cs[1] = 1;
    iv = 100000;

    batch_init(&b);
    batch_d(&b, "bk:none", 1, (const char *[]) { "bk:a" }, dnm, &l, &two);
    batch_c(&b, "bk:lim", 1, (const char *[]) { "bk:a" }, dnm, &l, &one);
    batch_c(&b, "bk:lim", 2, (const char *[]) { "bk:d", "bk:e" }, dnm, ls,
            cs);
    batch_r(&b, "bk:lim", 1, (const char *[]) { "bk:a" }, &one, &iv);
    batch_d(&b, "bk:lim", 1, (const char *[]) { "bk:a" }, dnm, &l, &one);
    batch_c(&b, "bk:none", 1, (const char *[]) { "bk:a" }, dnm, &l, &one);
    batch_d(&b, "bk:none", 2, (const char *[]) { "bk:b", "bk:c" }, dnm,
            ls, cs);
    batch_r(&b, "bk:lim", 1, (const char *[]) { "bk:b" }, &one, &iv);

    assert_string_equal(b.desc, "d1c1c2r1d1c1d2r1");

    batch_run(&b, watch, 5, &run);
    assert_int_equal(run.reply->elements, 7 + 7 + 14 + 1 + 7 + 7 + 14 + 1
                                          + 7);

    /* d1 without override: charged 2 units of 100 ms */

    assert_int_equal(dify_gcra_parse_group(run.reply->element,
                                           DIFY_GCRA_OP_DEFAULT, 1, res,
                                           &err), DIFY_REPLY_OK);
    assert_int_equal(res[0].verdict, DIFY_GCRA_ALLOWED);
    assert_int_equal(res[0].limit.rate, 10);
    assert_int_equal(res[0].remaining, 3);
    assert_int_equal(res[0].reset, 200000);

    /* c1 and c2 under bk:lim: blocked, the override's limit, no state */

    assert_int_equal(dify_gcra_parse_group(run.reply->element + 7,
                                           DIFY_GCRA_OP_CHARGE, 1, res,
                                           &err), DIFY_REPLY_OK);
    assert_int_equal(res[0].verdict, DIFY_GCRA_BLOCKED);
    assert_int_equal(res[0].limit.rate, 7);
    assert_int_equal(res[0].limit.period, 60);
    assert_int_equal(res[0].limit.burst, 9);

    assert_int_equal(dify_gcra_parse_group(run.reply->element + 14,
                                           DIFY_GCRA_OP_CHARGE, 2, res,
                                           &err), DIFY_REPLY_OK);
    assert_int_equal(res[0].verdict, DIFY_GCRA_BLOCKED);
    assert_int_equal(res[1].verdict, DIFY_GCRA_BLOCKED);
    assert_int_equal(res[1].limit.rate, 10);            /* "day": none */

    /* r1 under bk:lim: one unit back to bk:a, not blocked */

    assert_int_equal(refunded(run.reply, 28), 1);

    /* d1 under bk:lim: blocked as "c" */

    assert_int_equal(dify_gcra_parse_group(run.reply->element + 29,
                                           DIFY_GCRA_OP_DEFAULT, 1, res,
                                           &err), DIFY_REPLY_OK);
    assert_int_equal(res[0].verdict, DIFY_GCRA_BLOCKED);
    assert_int_equal(res[0].limit.rate, 7);

    /* c1 without override, on the same state: 1 unit owed, 1 charged */

    assert_int_equal(dify_gcra_parse_group(run.reply->element + 36,
                                           DIFY_GCRA_OP_CHARGE, 1, res,
                                           &err), DIFY_REPLY_OK);
    assert_int_equal(res[0].verdict, DIFY_GCRA_ALLOWED);
    assert_int_equal(res[0].remaining, 3);
    assert_int_equal(res[0].reset, 200000);

    /* d2 on fresh states, then one of them given back to: empty */

    assert_int_equal(dify_gcra_parse_group(run.reply->element + 43,
                                           DIFY_GCRA_OP_DEFAULT, 2, res,
                                           &err), DIFY_REPLY_OK);
    assert_int_equal(res[0].verdict, DIFY_GCRA_ALLOWED);
    assert_int_equal(res[1].verdict, DIFY_GCRA_ALLOWED);
    assert_int_equal(res[1].reset, 100000);
    assert_int_equal(refunded(run.reply, 57), 1);

    /* the states: once each, at the end */

    assert_int_equal(run.get[0]->type, REDIS_REPLY_STRING);
    assert_int_equal(strtoll(run.get[0]->str, NULL, 10),
                     run.now + 200000);
    assert_int_equal(run.pxat[0], (run.now + 200000 + 999) / 1000);
    assert_int_equal(run.get[1]->type, REDIS_REPLY_NIL);
    assert_int_equal(run.pxat[1], -2);
    assert_int_equal(run.get[2]->type, REDIS_REPLY_STRING);
    assert_int_equal(strtoll(run.get[2]->str, NULL, 10),
                     run.now + 100000);
    assert_int_equal(run.get[3]->type, REDIS_REPLY_NIL);
    assert_int_equal(run.get[4]->type, REDIS_REPLY_NIL);

    freeReplyObject(run.exec);

    /* a "d" alone under a blocked override: the EXISTS finds it */

    batch_init(&b);
    batch_d(&b, "bk:lim", 1, (const char *[]) { "bk:d" }, dnm, &l, &one);
    batch_run(&b, watch, 5, &run);
    assert_int_equal(dify_gcra_parse_group(run.reply->element,
                                           DIFY_GCRA_OP_DEFAULT, 1, res,
                                           &err), DIFY_REPLY_OK);
    assert_int_equal(res[0].verdict, DIFY_GCRA_BLOCKED);
    assert_int_equal(run.get[3]->type, REDIS_REPLY_NIL);
    freeReplyObject(run.exec);

    /* and "d" groups under no override at all, in a batch of their own */

    batch_init(&b);
    batch_d(&b, "bk:none", 1, (const char *[]) { "bk:d" }, dnm, &l, &one);
    batch_d(&b, "bk:none2", 1, (const char *[]) { "bk:d" }, dnm, &l, &one);
    batch_run(&b, watch, 5, &run);
    assert_int_equal(dify_gcra_parse_group(run.reply->element + 7,
                                           DIFY_GCRA_OP_DEFAULT, 1, res,
                                           &err), DIFY_REPLY_OK);
    assert_int_equal(res[0].verdict, DIFY_GCRA_ALLOWED);
    assert_int_equal(res[0].reset, 200000);
    assert_int_equal(strtoll(run.get[3]->str, NULL, 10), run.now + 200000);
    freeReplyObject(run.exec);
}

/*
 * The largest batch the node sends: 64 groups of 8 limits, "c8" and
 * "d8" in turn, all on the same 8 states; each group sees the units
 * of every group before it, and each state is written once.
 */

static void
test_batch_largest(void **state)
{
    size_t               g, i, off;
    uint64_t             costs[8];
    test_run_t           run;
    test_batch_t        *b;
    dify_gcra_limit_t    ls[8];
    dify_gcra_result_t   res[8];
    const char          *err;
    const char          *keys[] = { "lg:0", "lg:1", "lg:2", "lg:3", "lg:4",
                                    "lg:5", "lg:6", "lg:7" };
    const char          *names[] = { "default", "n1", "n2", "n3", "n4",
                                     "n5", "n6", "n7" };

    (void) state;

    if (tr.missing) {
        skip();
    }

    b = malloc(sizeof(test_batch_t));
    assert_non_null(b);

    for (i = 0; i < 8; i++) {
        ls[i] = lim(1000, 1, 100);
        costs[i] = 1;
    }

    batch_init(b);

    for (g = 0; g < 64; g++) {
        if (g % 2) {
            batch_d(b, "lg:lim", 8, keys, names, ls, costs);

        } else {
            batch_c(b, "lg:lim", 8, keys, names, ls, costs);
        }
    }

    batch_run(b, keys, 8, &run);
    assert_int_equal(b->nkeys, 64 * 9 + 2);

    off = 0;

    for (g = 0; g < 64; g++) {
        err = NULL;
        assert_int_equal(dify_gcra_parse_group(run.reply->element + off,
                                               b->ops[g], 8, res, &err),
                         DIFY_REPLY_OK);

        for (i = 0; i < 8; i++) {
            assert_int_equal(res[i].verdict, DIFY_GCRA_ALLOWED);
            assert_int_equal(res[i].remaining, 100 - (g + 1));
            assert_int_equal(res[i].reset, (g + 1) * 1000);
        }

        off += dify_gcra_reply_width(b->ops[g], 8);
    }

    for (i = 0; i < 8; i++) {
        assert_int_equal(run.get[i]->type, REDIS_REPLY_STRING);
        assert_int_equal(strtoll(run.get[i]->str, NULL, 10),
                         run.now + 64000);
        assert_int_equal(run.pxat[i], (run.now + 64000 + 999) / 1000);
    }

    freeReplyObject(run.exec);
    free(b);
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
        cmocka_unit_test_setup(test_batch_arguments, test_setup),
        cmocka_unit_test_setup(test_batch_random, test_setup),
        cmocka_unit_test_setup(test_batch_random_undeclared, test_setup),
        cmocka_unit_test_setup(test_batch_undeclared, test_setup),
        cmocka_unit_test_setup(test_batch_default, test_setup),
        cmocka_unit_test_setup(test_batch_blocked, test_setup),
        cmocka_unit_test_setup(test_batch_largest, test_setup),
    };

    return cmocka_run_group_tests_name("dify_gcra_redis", tests,
                                       group_setup, group_teardown);
}
