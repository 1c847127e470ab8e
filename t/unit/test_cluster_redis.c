/*
 * Copyright (C) The ngx_dify_status_module authors
 *
 * dify_cluster_keyslot() against Redis's own CLUSTER KEYSLOT, on a real
 * cluster-enabled redis-server: 5000 keys, random bytes, hash tags of
 * every shape ("{", "}", "{}", nested, several), and keys as the
 * limiter writes them.
 *
 * The server listens on a unix socket in a temporary directory (its
 * cluster bus on port 27097: cluster mode needs one), and gets SIGTERM
 * should this test die first (PR_SET_PDEATHSIG).  Without redis-server
 * the test is skipped.  DIFY_REDIS_SERVER overrides the path of the
 * binary.
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
#include <sys/types.h>
#include <sys/wait.h>
#include <cmocka.h>

#include "dify_cluster.h"


#define TEST_SERVER  "/usr/bin/redis-server"
#define TEST_KEYS    5000
#define TEST_KEY_MAX 48


static struct {
    int            missing;
    pid_t          pid;
    char           dir[64];
    char           sock[128];
    char           conf[128];
    redisContext  *c;
} tr;


static int
group_setup(void **state)
{
    int          i, fd;
    pid_t        parent;
    const char  *bin;

    (void) state;

    bin = getenv("DIFY_REDIS_SERVER");

    if (bin == NULL) {
        bin = TEST_SERVER;
    }

    if (access(bin, X_OK) != 0) {
        print_message("# %s not found: skipping\n", bin);
        tr.missing = 1;
        return 0;
    }

    strcpy(tr.dir, "/tmp/dify-cluster-redis.XXXXXX");

    if (mkdtemp(tr.dir) == NULL) {
        return -1;
    }

    snprintf(tr.sock, sizeof(tr.sock), "%s/redis.sock", tr.dir);
    snprintf(tr.conf, sizeof(tr.conf), "%s/nodes.conf", tr.dir);

    parent = getpid();
    tr.pid = fork();

    if (tr.pid == -1) {
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
              "--cluster-enabled", "yes",
              "--cluster-port", "27097",
              "--cluster-config-file", tr.conf,
              "--save", "",
              "--appendonly", "no",
              "--dir", tr.dir,
              "--daemonize", "no",
              (char *) NULL);

        _exit(127);
    }

    for (i = 0; i < 500; i++) {
        tr.c = redisConnectUnix(tr.sock);

        if (tr.c != NULL && tr.c->err == 0) {
            return 0;
        }

        if (tr.c != NULL) {
            redisFree(tr.c);
            tr.c = NULL;
        }

        usleep(10000);
    }

    print_error("cannot connect to %s\n", tr.sock);

    return -1;
}


static int
group_teardown(void **state)
{
    char  path[192];

    (void) state;

    if (tr.c != NULL) {
        redisFree(tr.c);
    }

    if (tr.pid > 0) {
        (void) kill(tr.pid, SIGKILL);
        (void) waitpid(tr.pid, NULL, 0);
    }

    if (tr.dir[0]) {
        snprintf(path, sizeof(path), "%s/redis.sock", tr.dir);
        (void) unlink(path);
        snprintf(path, sizeof(path), "%s/nodes.conf", tr.dir);
        (void) unlink(path);
        (void) rmdir(tr.dir);
    }

    return 0;
}


/* a key of every shape, from a deterministic generator */

static size_t
make_key(unsigned n, char *key)
{
    size_t          i, len;
    static const char  alpha[] = "ab{}:x{}0";

    srand(n);

    switch (n % 5) {

    case 0:
        /* as the limiter writes them */
        len = (size_t) snprintf(key, TEST_KEY_MAX, "dify:status:{%08x%08x}:%s",
                                (unsigned) rand(), (unsigned) rand(),
                                (n & 8) ? "tat" : "limit");
        return len;

    case 1:
        /* any byte */
        len = 1 + rand() % 24;

        for (i = 0; i < len; i++) {
            key[i] = (char) (rand() & 0xff);
        }

        return len;

    default:
        /* braces everywhere */
        len = rand() % 16;

        for (i = 0; i < len; i++) {
            key[i] = alpha[rand() % (sizeof(alpha) - 1)];
        }

        return len;
    }
}


static void
test_keyslot_live(void **state)
{
    char         keys[TEST_KEYS][TEST_KEY_MAX];
    size_t       lens[TEST_KEYS];
    unsigned     i;
    redisReply  *reply;

    (void) state;

    if (tr.missing) {
        skip();
    }

    for (i = 0; i < TEST_KEYS; i++) {
        lens[i] = make_key(i, keys[i]);

        assert_int_equal(redisAppendCommand(tr.c, "CLUSTER KEYSLOT %b",
                                            keys[i], lens[i]),
                         REDIS_OK);
    }

    for (i = 0; i < TEST_KEYS; i++) {
        assert_int_equal(redisGetReply(tr.c, (void **) &reply), REDIS_OK);
        assert_int_equal(reply->type, REDIS_REPLY_INTEGER);

        if ((unsigned) reply->integer
            != dify_cluster_keyslot(keys[i], lens[i]))
        {
            fail_msg("key %u (%zu bytes): Redis says %lld, we say %u", i,
                     lens[i], reply->integer,
                     dify_cluster_keyslot(keys[i], lens[i]));
        }

        freeReplyObject(reply);
    }
}


int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_keyslot_live),
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
