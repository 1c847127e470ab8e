#!/usr/bin/perl
#
# The raw API key goes no further than its SHA-256: it appears in no Redis
# key, in no command sent to Redis (MONITOR), in no access log field and in
# no error log line the module writes, even at debug level.  The only lines
# allowed to carry it are nginx's own debug dumps of the request headers
# (core code, which prints every header it parses and proxies).
#
# The key passes through every path that logs: passed, limited, limited
# from the shadow, over the burst, blocked, dry run, each rejection of rows
# 2-7, a Redis error reply, Redis down (deny and local fallbacks).

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use IO::Socket::INET;
use Time::HiRes qw(time sleep);
use DifyTest qw(uuid route ids_body);
use DifyLimit qw(fresh_key key_hash tat_key limit_key patch wait_for);

DifyTest::require_module();

# distinctive, and searched for without its "dataset-" prefix too
my $SECRET = 'Zk4Qv9TtW2xLp7RmN3sB8yHc';
my $KEY = "dataset-$SECRET";
my $DRY = "dataset-dry$SECRET";
my $BLK = "dataset-blk$SECRET";
my $ERR = "dataset-err$SECRET";
my $PW = 'RedisPw7Hq2Lm';

my $t = DifyTest->new(log_level => 'debug');
$t->start_redis(password => 'admin-pw');
$t->redis('ACL', 'SETUSER', 'gw', 'on', ">$PW", '~dify:status:*',
          '+evalsha', '+eval', '+ping', '+select',
          '+hmget', '+time', '+mget', '+exists', '+set');

# every variable of the module, and the usual request fields; the Redis
# timeout is scaled in valgrind mode (nginx ~10x slower, at debug level):
# no fallback by accident
my $REDIS_TIMEOUT = 500 * (DifyTest->valgrind ? DifyTest::slow() : 1);
$t->start_nginx(workers => 2, http => qq{
    dify_status_redis %%REDIS%% timeout=${REDIS_TIMEOUT}ms user=gw password=$PW;
    log_format priv '\$remote_addr "\$request" \$status \$body_bytes_sent '
                    '"\$http_user_agent" \$dify_status \$dify_status_code '
                    '\$dify_status_key \$dify_status_remaining '
                    '\$dify_status_documents \$dify_status_action '
                    '\$dify_status_dataset_id';
    server {
        listen 127.0.0.1:%%PORT%%;
        access_log %%DIR%%/priv.log priv;
        access_log %%DIR%%/combined.log combined;
        dify_status_max_body_size 2k;
        location /v1/ {
            dify_status on;
            dify_status_limit rate=3 r/h cost=documents;
            dify_status_redis_fallback deny;
            dify_status_log_level info;
            proxy_pass http://upstream;
        }
        location /local/v1/ {
            dify_status on;
            dify_status_limit rate=3 r/h;
            dify_status_redis_fallback local;
            proxy_pass http://upstream;
        }
        location /dry/v1/ {
            dify_status on;
            dify_status_limit rate=1 r/h;
            dify_status_dry_run on;
            proxy_pass http://upstream;
        }
    }
});

wait_for(DifyTest::timeout(10), sub {
    patch($t, fresh_key('warm'))->{status} == 200 });

# every command Redis receives from now on
my $mon = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
    PeerPort => $t->redis_port, Proto => 'tcp', Timeout => 5)
    or die "monitor: $!";
syswrite $mon, "AUTH admin-pw\r\nMONITOR\r\n";
my $monitored = '';
sub drain_monitor {
    my ($wait) = @_;
    my $deadline = time + $wait;
    while (1) {
        my $rin = '';
        vec($rin, fileno $mon, 1) = 1;
        my $left = $deadline - time;
        last if $left <= 0;
        my $n = select(my $rout = $rin, undef, undef, $left);
        last unless $n && $n > 0;
        my $got = sysread $mon, $monitored, 65536, length $monitored;
        last unless $got;
    }
}
drain_monitor(0.3);
like $monitored, qr/\+OK/, 'MONITOR started';

my $path = route(uuid(1), 'enable');
my $ct = [ 'Content-Type' => 'application/json' ];
my @seen;
sub req { my $r = $t->http(@_); push @seen, $r->{status}; $r }

# passed, then over the burst, then limited by Redis, then by the shadow
patch($t, $KEY, ids => [ uuid(2) ]);
patch($t, $KEY, ids => [ map { uuid($_) } 3 .. 7 ]);   # cost 5 > burst 3
patch($t, $KEY, ids => [ uuid(2), uuid(3) ]);
patch($t, $KEY) for 1 .. 3;

# every rejection of rows 2-7 that has seen the key
for my $auth ("Bearer $KEY", "Basic $KEY", "Token $KEY", "$KEY") {
    req('PATCH', $path, headers => [ Authorization => $auth, @$ct ],
        body => ids_body(uuid(2)));
}
my @bad = (
    [ route(uuid(1), 'explode'), $ct, ids_body(uuid(2)) ],
    [ $path, [ 'Content-Type' => 'text/plain' ], ids_body(uuid(2)) ],
    [ $path, [ @$ct, 'Content-Encoding' => 'br' ], ids_body(uuid(2)) ],
    [ $path, $ct, ids_body(map { uuid($_) } 1 .. 100) ],
    [ $path, $ct, '{"document_ids":' ],
    [ $path, $ct, qq({"document_ids": ["$KEY"]}) ],
    [ $path, $ct, '{"document_ids": ["' . uuid(2) . '", 7]}' ],
);
for my $b (@bad) {
    req('PATCH', $b->[0], headers => [ Authorization => "Bearer $KEY",
                                       @{ $b->[1] } ], body => $b->[2]);
}

# blocked, and the dry run of a blocked and a limited key
$t->redis('HSET', limit_key($BLK), 'blocked', '1');
patch($t, $BLK);
$t->redis('HSET', limit_key($DRY), 'blocked', '1');
patch($t, $DRY, prefix => '/dry/v1');
$t->redis('HDEL', limit_key($DRY), 'blocked');
patch($t, $DRY, prefix => '/dry/v1') for 1 .. 3;

# an error reply from Redis (a corrupt override is not one; a wrong type is)
$t->redis('SET', limit_key($ERR), 'not a hash');
patch($t, $ERR);
$t->redis('DEL', limit_key($ERR));

# NOSCRIPT, then EVAL
$t->redis('SCRIPT', 'FLUSH');
patch($t, fresh_key('x'));
patch($t, $KEY, prefix => '/local/v1');

drain_monitor(0.5);
my @keys = split /\n/, $t->redis_cli('--scan');
my @vals = map { $t->redis_cli('DUMP', $_) } @keys;

# Redis down: deny and local fallbacks
$t->stop_redis;
patch($t, $KEY) for 1 .. 2;
patch($t, $KEY, prefix => '/local/v1') for 1 .. 4;
$t->start_redis;

# ---------------------------------------------------------------------------
my $hash = key_hash($KEY);

like $monitored, qr/EVAL/, 'MONITOR saw the limiter\'s commands';
like $monitored, qr/\Q$hash\E/, 'MONITOR saw the key\'s hash (control)';
unlike $monitored, qr/\Q$SECRET\E/, 'no command sent to Redis carries the key';
unlike $monitored, qr/\Q$PW\E/, 'nor the Redis password';

ok((grep { $_ eq tat_key($KEY) } @keys), 'the key\'s state is in Redis '
    . '(control)') or diag explain \@keys;
ok(!(grep { /\Q$SECRET\E/ } @keys), 'no Redis key carries the key');
ok(!(grep { /\Q$SECRET\E/ } @vals), 'no Redis value carries it');

for my $f (qw(priv.log combined.log)) {
    my $log = DifyTest::_slurp($t->dir . "/$f");
    like $log, qr/\S/, "$f is not empty";
    unlike $log, qr/\Q$SECRET\E/, "$f does not carry the key";
}
my $priv = DifyTest::_slurp($t->dir . '/priv.log');
like $priv, qr/ \Q${\ substr $hash, 0, 12}\E/,
    '$dify_status_key logs the hash prefix (control)';
like $priv, qr/ limited /, 'a limited request was logged (control)';
like $priv, qr/ blocked /, 'a blocked request was logged (control)';

my $log = $t->error_log;
like $log, qr/\[debug\]/, 'the error log is at debug level (control)';
like $log, qr/dify_status/, 'the module logged (control)';
like $log, qr/dry run/, 'the dry run logged (control)';
like $log, qr/redis "[^"]+" answered "/, 'the error reply was logged (control)';
like $log, qr/503 service_unavailable/, 'the deny fallback was logged (control)';

# nginx core's dumps of the request headers are the only lines allowed
my @leaks;
for my $line (split /\n/, $log) {
    next unless $line =~ /\Q$SECRET\E/;
    next if $line =~ /\[debug\] \d+#\d+: \*\d+ http (?:proxy )?header: "Authorization: /;
    next if $line =~ /^Authorization: [^"]*\Q$SECRET\E\r?$/;    # proxy dump
    push @leaks, $line;
}
ok !@leaks, 'the key is in no error log line but nginx\'s header dumps'
    or diag join "\n", @leaks[0 .. ($#leaks > 9 ? 9 : $#leaks)];
unlike $log, qr/\Q$PW\E/, 'the Redis password is in no error log line';

# a control that the scan above can fail: nginx's dumps are there
ok((grep { /http header: "Authorization: Bearer \Q$KEY\E"/ } split /\n/, $log),
    'nginx\'s own header dump carries it (the filter is not vacuous)');

close $mon;
$t->done;
done_testing;
