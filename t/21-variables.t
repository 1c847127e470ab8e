#!/usr/bin/perl
#
# The $dify_status* variables, read through an access log with a custom
# log_format: a passed request, every rejection the module can give, a
# request it does not check, an internal redirect, and (with a Redis)
# the limiter's outcomes.  $dify_status_key is the first 12 hex digits
# of the token's SHA-256; the token itself is never written to a log.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Digest::SHA qw(sha256_hex);
use DifyTest qw(uuid route ids_body);
use DifyLimit qw(fresh_key limit_key wait_for);

DifyTest::require_module();

my @VARS = qw(dify_status dify_status_code dify_status_action
              dify_status_dataset_id dify_status_documents dify_status_key
              dify_status_remaining);

my $FORMAT = join '|', 'id=$http_x_test_id',
    map({ "$_=\$$_" } @VARS), 'st=$status';

my $LOCATIONS = q{
        location /v1/ {
            dify_status on;
            dify_status_max_body_size 1k;
            proxy_pass http://upstream;
        }

        location /redirect/ {
            dify_status on;
            proxy_pass http://upstream;
            proxy_intercept_errors on;
            error_page 500 = @after;
        }

        location @after {
            return 200 "after\n";
        }

        location /off/ {
            proxy_pass http://upstream;
        }
};

my $t = DifyTest->new;

my @TOKENS;                             # every token sent, to look for

# the log lines, by X-Test-Id
sub logged {
    my ($id) = @_;
    my $line;
    wait_for(DifyTest::timeout(5), sub {
        open my $fh, '<', $t->dir . '/vars.log' or return 0;
        while (<$fh>) {
            chomp;
            $line = $_ if /^id=\Q$id\E\|/;
        }
        close $fh;
        return defined $line;
    });
    return undef unless defined $line;
    my %v = map { /^([^=]+)=(.*)$/s ? ($1, $2) : () } split /\|/, $line;
    return \%v;
}

# one request; returns the response and the logged variables
sub req {
    my ($id, %o) = @_;
    my $token = $o{token} // 'dataset-varsTOKEN0123456789';
    push @TOKENS, $token;
    my @h = ('X-Test-Id' => $id);
    push @h, Authorization => $o{auth} // "Bearer $token"
        unless exists $o{auth} && !defined $o{auth};
    push @h, 'Content-Type' => $o{ct} // 'application/json';
    push @h, @{ $o{headers} // [] };
    my $path = $o{path} // route($o{dataset} // uuid(1),
                                 $o{action} // 'enable',
                                 $o{prefix} // '/v1');
    my $r = $t->http($o{method} // 'PATCH', $path, headers => \@h,
                     body => $o{body} // ids_body(uuid(2)));
    $t->upstream_clear;
    return ($r, logged($id));
}

# checks the variables of one log line: "-" means not found
sub vars_are {
    my ($v, $want, $name) = @_;
    my %w = map { ($_ => '-') } @VARS;
    %w = (%w, map { ("dify_status$_" => $want->{$_}) } keys %$want);
    is_deeply { map { ($_ => $v->{$_}) } @VARS }, \%w, $name
        or diag explain $v;
}

sub key12 { return substr(sha256_hex($_[0]), 0, 12) }


$t->start_nginx(http => qq{
    log_format vars '$FORMAT';

    server {
        listen 127.0.0.1:%%PORT%%;
        server_name localhost;
        access_log %%DIR%%/vars.log vars;
$LOCATIONS
    }
});

my $tok = 'dataset-varsTOKEN0123456789';
my $k12 = key12($tok);
like $k12, qr/^[0-9a-f]{12}$/, 'the expected key: 12 hex digits';

my ($r, $v);

# passed
($r, $v) = req('passed');
is $r->{status}, 200, 'passed: 200';
vars_are($v, { '' => 'passed', _action => 'enable',
               _dataset_id => uuid(1), _documents => 1, _key => $k12 },
         'passed: the variables');

($r, $v) = req('passed3', body => ids_body(map { uuid($_) } 2 .. 4));
is $r->{status}, 200, 'passed, 3 ids: 200';
is $v->{dify_status_documents}, 3, 'passed: $dify_status_documents 3';

($r, $v) = req('archive', action => 'un_archive');
is $v->{dify_status_action}, 'un_archive', '$dify_status_action';

# every rejection, in the contract's order
($r, $v) = req('not_found', dataset => 'not-a-uuid');
is $r->{status}, 404, 'not_found: 404';
vars_are($v, { '' => 'rejected', _code => 'not_found', _action => 'enable',
               _dataset_id => 'not-a-uuid' },
         'not_found: the variables (no key: checked before auth)');

($r, $v) = req('no_auth', auth => undef);
is $r->{status}, 401, 'unauthorized (no header): 401';
vars_are($v, { '' => 'rejected', _code => 'unauthorized',
               _action => 'enable', _dataset_id => uuid(1) },
         'unauthorized (no header): the variables');

($r, $v) = req('basic', auth => "Basic $tok");
is $r->{status}, 401, 'unauthorized (scheme): 401';
vars_are($v, { '' => 'rejected', _code => 'unauthorized',
               _action => 'enable', _dataset_id => uuid(1) },
         'unauthorized (scheme): no key');

($r, $v) = req('invalid_action', action => 'bogus');
is $r->{status}, 400, 'invalid_action: 400';
vars_are($v, { '' => 'rejected', _code => 'invalid_action',
               _action => 'bogus', _dataset_id => uuid(1), _key => $k12 },
         'invalid_action: the variables');

($r, $v) = req('media', ct => 'text/plain');
is $r->{status}, 415, 'unsupported_media_type: 415';
vars_are($v, { '' => 'rejected', _code => 'unsupported_media_type',
               _action => 'enable', _dataset_id => uuid(1), _key => $k12 },
         'unsupported_media_type: the variables');

($r, $v) = req('large', body => ids_body(map { uuid($_) } 1 .. 100));
is $r->{status}, 413, 'request_entity_too_large: 413';
vars_are($v, { '' => 'rejected', _code => 'request_entity_too_large',
               _action => 'enable', _dataset_id => uuid(1), _key => $k12 },
         'request_entity_too_large: the variables');

($r, $v) = req('bad', body => '{"document_ids": [');
is $r->{status}, 400, 'bad_request: 400';
vars_are($v, { '' => 'rejected', _code => 'bad_request',
               _action => 'enable', _dataset_id => uuid(1), _key => $k12 },
         'bad_request: the variables');

($r, $v) = req('param', body => '{"document_ids": ["x"]}');
is $r->{status}, 400, 'invalid_param: 400';
vars_are($v, { '' => 'rejected', _code => 'invalid_param',
               _action => 'enable', _dataset_id => uuid(1), _key => $k12 },
         'invalid_param: the variables, no count of documents');

# requests the module does not check
($r, $v) = req('get', method => 'GET', body => '');
is $r->{status}, 200, 'GET on the route: 200';
vars_are($v, {}, 'GET on the route: nothing found');

($r, $v) = req('other', path => '/v1/datasets/' . uuid(1));
is $r->{status}, 200, 'PATCH on another path: 200';
vars_are($v, {}, 'PATCH on another path: nothing found');

($r, $v) = req('off', prefix => '/off/v1');
is $r->{status}, 200, 'dify_status off: 200';
vars_are($v, {}, 'dify_status off: nothing found');

# an internal redirect after the check: the context is recovered
($r, $v) = req('redirect', prefix => '/redirect/v1',
               headers => [ 'X-Test-Upstream-Status' => 500 ]);
is $r->{status}, 200, 'upstream 500, error_page to a named location';
is $r->{body}, "after\n", 'the named location answered';
vars_are($v, { '' => 'passed', _action => 'enable',
               _dataset_id => uuid(1), _documents => 1, _key => $k12 },
         'after the internal redirect: the same variables');

$t->stop_nginx;


# ------------------------------------------------------------------
# the limiter's outcomes

SKIP: {
    skip 'no redis-server', 1 unless -x '/usr/bin/redis-server';

    $t->start_redis;

    $t->start_nginx(http => qq{
    log_format vars '$FORMAT';

    # a timeout long enough for valgrind: no fallback by accident
    dify_status_redis %%REDIS%% timeout=${\ DifyTest::timeout(2) }s;

    server {
        listen 127.0.0.1:%%PORT%%;
        server_name localhost;
        access_log %%DIR%%/vars.log vars;

        location /v1/ {
            dify_status on;
            dify_status_limit rate=2 r/m burst=2;
            proxy_pass http://upstream;
        }

        location /warm/ {
            dify_status on;
            dify_status_limit rate=1 r/m burst=1;
            dify_status_redis_fallback deny;
            proxy_pass http://upstream;
        }

        location /dry/ {
            dify_status on;
            dify_status_limit rate=1 r/m burst=1;
            dify_status_dry_run on;
            proxy_pass http://upstream;
        }

        location /deny/ {
            dify_status on;
            dify_status_limit rate=1 r/m burst=1;
            dify_status_redis_fallback deny;
            proxy_pass http://upstream;
        }

        location /allow/ {
            dify_status on;
            dify_status_limit rate=1 r/m burst=1;
            dify_status_redis_fallback allow;
            proxy_pass http://upstream;
        }

        location /local/ {
            dify_status on;
            dify_status_limit rate=1 r/m burst=1;
            dify_status_redis_fallback local;
            proxy_pass http://upstream;
        }
    }
    });

    # until the worker has its Redis connection and the script is
    # loaded: the warm-up location answers 503 before
    ok wait_for(DifyTest::timeout(10), sub {
        my ($r) = req('warm', token => fresh_key('w'), prefix => '/warm/v1');
        return $r->{status} == 200;
    }), 'the worker is connected to Redis';

    my $k = fresh_key('v');
    my $h = key12($k);
    my $base = { _action => 'enable', _dataset_id => uuid(1),
                 _documents => 1, _key => $h };

    ($r, $v) = req('rl1', token => $k);
    is $r->{status}, 200, 'limit: 1st passes';
    vars_are($v, { %$base, '' => 'passed', _remaining => 1 },
             'limit: 1st, remaining 1');

    ($r, $v) = req('rl2', token => $k);
    is $r->{status}, 200, 'limit: 2nd passes';
    vars_are($v, { %$base, '' => 'passed', _remaining => 0 },
             'limit: 2nd, remaining 0');

    ($r, $v) = req('rl3', token => $k);
    is $r->{status}, 429, 'limit: 3rd is limited';
    vars_are($v, { %$base, '' => 'limited', _code => 'too_many_requests',
                   _remaining => 0 },
             'limit: 3rd, limited, remaining 0');

    # blocked by the key's override
    my $kb = fresh_key('b');
    $t->redis('HSET', limit_key($kb), 'blocked', '1');
    ($r, $v) = req('blocked', token => $kb);
    is $r->{status}, 403, 'blocked: 403';
    vars_are($v, { %$base, '' => 'blocked', _code => 'forbidden',
                   _key => key12($kb) },
             'blocked: the variables, no remaining');

    # dry run
    my $kd = fresh_key('d');
    req('dry1', token => $kd, prefix => '/dry/v1');
    ($r, $v) = req('dry2', token => $kd, prefix => '/dry/v1');
    is $r->{status}, 200, 'dry run: over the limit, passes';
    vars_are($v, { %$base, '' => 'dry_run_limited', _key => key12($kd),
                   _remaining => 0 },
             'dry run: dry_run_limited');

    # Redis gone: the fallbacks
    $t->kill_redis;

    my $kf = fresh_key('f');
    my $fb = { %$base, _key => key12($kf) };
    my $n = 0;
    ok wait_for(DifyTest::timeout(10), sub {
        ($r, $v) = req('deny' . $n++, token => $kf, prefix => '/deny/v1');
        return $r->{status} == 503;
    }), 'fallback deny: 503';
    vars_are($v, { %$fb, '' => 'fallback_denied',
                   _code => 'service_unavailable' },
             'fallback deny: fallback_denied');

    ($r, $v) = req('allow', token => $kf, prefix => '/allow/v1');
    is $r->{status}, 200, 'fallback allow: 200';
    vars_are($v, { %$fb, '' => 'fallback_allowed' },
             'fallback allow: fallback_allowed');

    ($r, $v) = req('local1', token => $kf, prefix => '/local/v1');
    is $r->{status}, 200, 'fallback local: 1st passes';
    vars_are($v, { %$fb, '' => 'fallback_passed', _remaining => 0 },
             'fallback local: fallback_passed, remaining 0');

    ($r, $v) = req('local2', token => $kf, prefix => '/local/v1');
    is $r->{status}, 429, 'fallback local: 2nd is limited';
    vars_are($v, { %$fb, '' => 'fallback_limited',
                   _code => 'too_many_requests', _remaining => 0 },
             'fallback local: fallback_limited');
}

$t->stop_nginx;

# the raw tokens are nowhere in the logs, though rejections were logged
like $t->error_log, qr/\Q$k12\E/,
    'the error log names a rejected key by its hash';
my %seen = map { ($_ => 1) } @TOKENS;
my @logs = grep { -f } map { $t->dir . "/$_" }
    qw(vars.log access.log error.log);
ok @logs >= 2, 'logs to search: ' . join ' ', map { s{.*/}{}r } @logs;
for my $file (@logs) {
    open my $fh, '<', $file or die "$file: $!";
    my $text = do { local $/; <$fh> };
    close $fh;
    my @found = grep { index($text, $_) >= 0
                       || index($text, substr($_, 8)) >= 0 } sort keys %seen;
    ok !@found, "no token in " . ($file =~ s{.*/}{}r)
        or diag "found: @found";
}

$t->done;
done_testing;
