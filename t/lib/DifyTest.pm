package DifyTest;

=pod

=head1 NAME

DifyTest - integration test harness for ngx_http_dify_status_module

Core Perl only (Test::More, HTTP::Tiny, IO::Socket::INET, JSON::PP,
File::Temp, POSIX, Time::HiRes, MIME::Base64).  It runs the real
/usr/sbin/nginx with C<load_module $ENV{DIFY_MODULE}>, a recording upstream
(t/lib/upstream.pl) and, when asked, a real redis-server, all on free ports
in a private temporary directory, and cleans everything up even when the
test dies.

=head1 SYNOPSIS

    use FindBin;
    use lib "$FindBin::Bin/lib";
    use Test::More;
    use DifyTest qw(uuid route envelope);

    DifyTest::require_module();          # skip_all unless DIFY_MODULE is set
    my $t = DifyTest->new;
    $t->start_nginx(server => q{
        location /v1 { dify_status on; proxy_pass http://upstream; }
    });
    my $r = $t->request('PATCH', route(uuid(1), 'enable'),
        headers => { Authorization => 'Bearer dataset-x',
                     'Content-Type' => 'application/json' },
        body => '{"document_ids":["' . uuid(2) . '"]}');
    $t->pass_ok($r, body => ..., name => 'valid request passes');
    $t->done;                            # exactly ONE test: clean teardown
    done_testing;

=head1 ENVIRONMENT

  DIFY_MODULE     path of the module .so; unset: no load_module line
  DIFY_SANITIZE   ''        plain run
                  'asan'    DIFY_MODULE is an ASan/UBSan build; nginx runs
                            with LD_PRELOAD of gcc's libasan.so and of the
                            module (so that nginx's dlclose() at exit does
                            not turn our frames into bare addresses before
                            the leak check); ASan/UBSan/LSan reports go to
                            DIR/san/ and any report fails the teardown
                            test, except leak reports whose every stack
                            has no frame of ours (ngx_http_dify*, dify_*,
                            the module, libjansson, libhiredis, or an
                            unknown module): those are nginx's own, as are
                            the leaks suppressed by t/lib/lsan.supp
                  'valgrind' nginx runs as "master_process off; daemon off;"
                            under valgrind (memcheck, --leak-check=full,
                            definite leaks are errors, nginx's own in
                            t/lib/valgrind.supp); any error fails the
                            teardown test; worker_processes is ignored,
                            reload() dies (tests skip what needs them)
  DIFY_NGINX      nginx binary (default /usr/sbin/nginx)
  DIFY_TEST_KEEP  1: keep the temporary directory (always kept on failure)
  DIFY_TEST_LOG_LEVEL  error_log level (default info; debug works, the
                  Debian binary is built --with-debug)

=head1 CONSTRUCTOR

  DifyTest->new(log_level => 'info')

=head1 NGINX

  $t->start_nginx(server => $snippet, %opt)  # inside a generated server {}
  $t->start_nginx(http   => $snippet, %opt)  # inside http {}
  $t->start_nginx(conf   => $full_conf)      # whole file (placeholders only)

Options: C<preload> (a library for LD_PRELOAD, before a sanitizer's),
C<env> (a hashref of environment variables for nginx), C<main>
(main-context directives), C<events> (directives
inside events{}, e.g. "accept_mutex on;"), C<workers> (default 1),
C<upstream_block> (default 1: defines C<upstream upstream { server
127.0.0.1:%%UPSTREAM_PORT%%; }> in http{}, so C<proxy_pass http://upstream;>
reaches the recording upstream), C<no_module> (omit load_module).
The generated server{} listens on 127.0.0.1:%%PORT%% (HTTP/1.x) and on
127.0.0.1:%%H2PORT%% http2 (prior knowledge).

The generated file sets: load_module, C<user root> (when run as root),
daemon off (nginx is a child of the test, in its own process group),
master_process on, worker_processes, pid/error_log/access_log and every
*_temp_path inside the temp directory, worker_shutdown_timeout
(10 s scaled, unless C<main> sets its own).
Dies when nginx does not come up (with the error log).  Retries with new
ports when a port was taken meanwhile.

Placeholders, replaced everywhere:

  %%PORT%% %%PORT2%% %%PORTanything%% %%H2PORT%%   free ports (nginx listens)
  %%UPSTREAM%%  127.0.0.1:port of the recording upstream (started lazily)
  %%UPSTREAM_PORT%%
  %%REDIS%%     127.0.0.1:port of redis (port reserved lazily; redis is
                started only by start_redis, so a config may name a Redis
                that is down)
  %%REDIS_PORT%%
  %%DEAD%%      127.0.0.1:port where nothing listens (connect is refused)
  %%DEAD_PORT%%
  %%DIR%%       the temp directory
  %%MODULE%%    a private copy of $ENV{DIFY_MODULE} (taken when first used,
                so a rebuild during the test cannot crash the workers)

  $t->stop_nginx            graceful (SIGQUIT, as nginx -s quit), waits
  $t->reload(%same_opts)    rewrites the config (same ports), SIGHUP, waits
                            for the new workers; returns 1, or 0 when the
                            reload failed.  Not in valgrind mode.
  $t->signal_nginx('HUP')
  $t->nginx_pid, $t->worker_pids
  $t->nginx_t(%same_opts)   runs nginx -t on such a config; returns
                            ($exit_code, $output) (exit code in scalar ctx)
  $t->port('PORT')          a placeholder's port
  $t->dir                   the temp directory
  $t->error_log             contents of DIR/error.log
  $t->log_mark; $t->error_log_since($mark)
  $t->allow_log(qr/.../)    an [alert]/[crit]/[emerg] line that teardown
                            should tolerate
  $t->valgrind, $t->asan    the mode; DifyTest::slow() is the time factor
  DifyTest::timeout($s)     $s seconds scaled for the mode

=head1 UPSTREAM

  $t->start_upstream        (implicit in start_nginx)
  $t->upstream_port
  $t->upstream_requests     list of { method, uri, version, headers =>
                            [[n,v],...], hdr => {lc name => value}, body
                            (exact bytes), body_length, chunked, head, conn }
  $t->upstream_connections  number of connections accepted since clear
  $t->upstream_clear

A request header C<X-Test-Upstream-Status: NNN> makes it answer NNN.

=head1 REDIS

  $t->start_redis(args => [...], password => 'pw')
  $t->redis_port            (reserved lazily, usable before start_redis)
  $t->stop_redis            SIGTERM, waits
  $t->kill_redis            SIGKILL
  $t->restart_redis         stop + start on the same port
  $t->pause_redis / $t->resume_redis   SIGSTOP / SIGCONT
  $t->redis(@cmd)           one command over RESP: string, integer,
                            arrayref, undef (nil) or { error => '...' };
                            dies when no reply in time.  An optional
                            first argument { timeout => s }.
  $t->redis_cli(@args)      runs redis-cli --raw, returns its output

=head1 CLIENTS

All return a response hashref:
  { status, reason, version, headers => { lc name => value (repeats joined
  with ", ") }, header_list => [[n,v],...], body, json (decoded or undef),
  interim => [ 1xx responses ] }

  $t->request($method, $path, headers => {...}, body => $bytes, port => N)
      HTTP::Tiny (note: it adds Content-Type application/octet-stream to
      a body without one; use http() for exact headers)
  $t->http($method, $path, headers => [n => v, ...] or {...}, body => $bytes,
           chunked => 1 | [sizes], expect => 1, keep_alive => 1,
           no_length => 1, port => N)
      exact bytes on a raw socket; adds Host, Content-Length (unless
      chunked/no_length/given) and Connection: close (unless keep_alive or
      given).  With expect => 1 it sends the head, waits for the first
      answer, and sends the body only after a 100 Continue ($r->{body_sent}).
      With trickle => $seconds (and pieces => [sizes]) it sends the head,
      then the wire body in pieces with a pause before each, so that nginx
      reads the body in several events (a code path, not a timing test).
      version => 'HTTP/1.0' changes the request line.
  DifyTest::build_request($method, $path, same opts) -> (head, body) bytes
  $t->raw($bytes, timeout => s) -> all bytes the server sent until it closed
  DifyTest::parse_responses($bytes) -> list of responses
  $t->connect(port => N) -> DifyTest::Conn with send($bytes),
      read_response(timeout => s, head => 1, keep_interim => 1),
      read_all(timeout => s), shutdown_write, eof_within(s), close
  $t->h2($method, $path, headers => {...} or [...], body => $bytes,
         no_length => 1, frame => max DATA size, pause => s between DATA)
      HTTP/2 (prior knowledge) on %%H2PORT%% with DifyTest::H2, a core-Perl
      client; adds content-length to a body unless no_length.  Besides
      the usual keys: rst (RST_STREAM code), body_sent, stream.
  $t->h2_connect -> DifyTest::H2 (several requests on one connection)
  $t->h2_curl(same args)
      the same with curl --http2-prior-knowledge; DifyTest::have_curl_h2()
      tells whether curl can.  curl 7.88 reports error 92 and no response
      when nginx answers before the body was sent and resets the stream
      (NO_ERROR), i.e. on every early rejection: use h2() for those.

=head1 ASSERTIONS

  $t->reject_ok($res, $status, $code, $message_or_regex, $name)
      one subtest: status, Content-Type application/json, body byte for
      byte {"status": N, "code": "...", "message": "..."} (a regex is
      matched against the message, the envelope is still checked),
      Content-Length, WWW-Authenticate on 401, and the upstream got
      nothing (no request, no connection); then clears the upstream log
  $t->pass_ok($res, method => 'PATCH', uri => $uri, body => $bytes,
              headers => { name => value }, name => $name)
      one subtest: 200 {"result": "success"}, exactly one upstream request
      with that method, URI and body (byte for byte); clears the upstream
  $t->nothing_upstream($name)   one test

=head1 TEARDOWN

  $t->done   stops nginx gracefully, then redis and the upstream, and runs
             exactly ONE test: no [alert]/[crit]/[emerg] in the error log,
             nginx quit on SIGQUIT, no sanitizer report.  Without it, the
             same happens in an END block (a failure then shows as a test
             after the plan).  Processes are killed by process group
             (only groups this harness created), even when the test dies.

=head1 HELPERS (exportable)

  uuid($n)                  a valid, deterministic UUID (lower case)
  route($dataset, $action, $prefix = '/v1')
  envelope($status, $code, $message)   the exact rejection body
  ids_body(@ids)            '{"document_ids": [...]}'

=cut

use strict;
use warnings;

use Test::More ();
use Exporter qw(import);
use File::Temp qw(tempdir);
use File::Basename qw(dirname);
use File::Path qw(remove_tree);
use Cwd qw(abs_path);
use POSIX ();
use IO::Socket::INET;
use HTTP::Tiny;
use JSON::PP;
use MIME::Base64 qw(decode_base64);
use Time::HiRes qw(sleep time);

our @EXPORT_OK = qw(uuid route envelope ids_body build_request
                    parse_responses have_h2 have_curl_h2 timeout);

our $NGINX    = $ENV{DIFY_NGINX} || '/usr/sbin/nginx';
our $MODULE   = $ENV{DIFY_MODULE};
our $SANITIZE = $ENV{DIFY_SANITIZE} // '';
our $LIBDIR   = dirname(abs_path(__FILE__));

my $OWNER = $$;
my $ASAN_EXIT = 23;     # a sanitizer's exit code; its report decides
my @INSTANCES;
my %USED_PORTS;

$MODULE = abs_path($MODULE) if $MODULE && -e $MODULE;

for my $sig (qw(INT TERM HUP PIPE)) {
    $SIG{$sig} = sub { die "caught SIG$sig\n" } unless $SIG{$sig};
}


# ------------------------------------------------------------------
# generic helpers

sub slow {
    return $SANITIZE eq 'valgrind' ? 10 : $SANITIZE eq 'asan' ? 3 : 1;
}

sub timeout { return $_[0] * slow() }

sub require_module {
    Test::More::plan(skip_all => 'DIFY_MODULE is not set') unless $MODULE;
    Test::More::plan(skip_all => "DIFY_MODULE $MODULE does not exist")
        unless -f $MODULE;
}

sub uuid {
    my ($n) = @_;
    return sprintf '%08x-%04x-4%03x-8%03x-%04x%08x',
        0x1f2e3d4c ^ $n, $n & 0xffff, ($n >> 4) & 0xfff, ($n * 7) & 0xfff,
        0x0123, (0x456789ab + $n) & 0xffffffff;
}

sub route {
    my ($dataset, $action, $prefix) = @_;
    $prefix //= '/v1';
    return "$prefix/datasets/$dataset/documents/status/$action";
}

sub envelope {
    my ($status, $code, $message) = @_;
    my $m = JSON::PP->new->allow_nonref->encode($message);
    return qq({"status": $status, "code": "$code", "message": $m});
}

sub ids_body {
    return '{"document_ids": [' . join(', ', map { qq("$_") } @_) . ']}';
}

sub have_h2 { return 1 }      # DifyTest::H2 is core Perl

sub _free_port {
    for (1 .. 200) {
        my $s = IO::Socket::INET->new(
            LocalAddr => '127.0.0.1', LocalPort => 0, Proto => 'tcp',
            Listen => 1,
        ) or next;
        my $p = $s->sockport;
        close $s;
        next if $USED_PORTS{$p}++;
        return $p;
    }
    die "DifyTest: no free port\n";
}

sub _slurp {
    my ($f) = @_;
    open my $fh, '<:raw', $f or return '';
    local $/;
    my $d = <$fh>;
    return $d // '';
}

sub _spew {
    my ($f, $d) = @_;
    open my $fh, '>:raw', $f or die "DifyTest: $f: $!\n";
    print $fh $d;
    close $fh or die "DifyTest: $f: $!\n";
}

# 1 when the process has exited (zombie, not yet reaped) or is gone
sub _is_dead {
    my ($pid) = @_;
    open my $fh, '<', "/proc/$pid/stat" or return 1;
    my $s = <$fh> // '';
    return $s =~ /^\d+ \(.*\) ([ZX])/s ? 1 : 0;
}


# ------------------------------------------------------------------
# construction

sub new {
    my ($class, %o) = @_;

    my $dir = tempdir('dify-test-XXXXXX', TMPDIR => 1, CLEANUP => 0);
    chmod 0755, $dir;
    mkdir "$dir/$_" for qw(tmp san redis);
    chmod 0777, "$dir/san";

    my $self = bless {
        dir         => $dir,
        procs       => {},
        ports       => {},
        listen      => [],
        log_level   => $o{log_level} // $ENV{DIFY_TEST_LOG_LEVEL} // 'info',
        keep        => $ENV{DIFY_TEST_KEEP} ? 1 : 0,
        allowed     => [],
        problems    => [],
        done        => 0,
        nrun        => 0,
    }, $class;

    push @INSTANCES, $self;
    return $self;
}

sub dir      { $_[0]{dir} }
sub valgrind { $SANITIZE eq 'valgrind' }
sub asan     { $SANITIZE eq 'asan' }

sub port {
    my ($self, $name) = @_;
    $name //= 'PORT';
    return $self->{ports}{$name} //= _free_port();
}

sub allow_log {
    my ($self, $re) = @_;
    push @{ $self->{allowed} }, $re;
}


# ------------------------------------------------------------------
# processes

sub _sanitizer_env {
    my ($self, %o) = @_;
    my $dir = $self->{dir};
    return () unless $SANITIZE eq 'asan';

    my $lib = `gcc -print-file-name=libasan.so 2>/dev/null`;
    chomp $lib;
    die "DifyTest: gcc's libasan.so not found (DIFY_SANITIZE=asan)\n"
        unless $lib && -e $lib;
    $lib = abs_path($lib);

    # The module is preloaded too: nginx dlclose()s it (and with it
    # libjansson and libhiredis) before the exit-time leak check, which
    # would then see bare addresses instead of our functions.  Preloaded,
    # it stays mapped and its frames keep their names.
    my $preload = $lib;
    $preload .= ' ' . $self->_module if $MODULE;

    my $leaks = $o{no_leaks} ? 0 : 1;
    return (
        LD_PRELOAD   => $preload,
        ASAN_OPTIONS => join(':',
            "log_path=$dir/san/asan", "detect_leaks=$leaks",
            'fast_unwind_on_malloc=0', 'malloc_context_size=30',
            'detect_odr_violation=0', 'verify_asan_link_order=0',
            'handle_abort=1', "exitcode=$ASAN_EXIT"),
        LSAN_OPTIONS => join(':',
            "suppressions=$LIBDIR/lsan.supp", 'print_suppressions=0'),
        UBSAN_OPTIONS => join(':',
            "log_path=$dir/san/ubsan", 'print_stacktrace=1',
            'halt_on_error=1'),
    );
}

# forks and execs $cmd in its own process group
sub _spawn {
    my ($self, $name, $cmd, %o) = @_;

    my $pid = fork;
    die "DifyTest: fork: $!\n" unless defined $pid;

    if ($pid == 0) {
        eval {
            POSIX::setpgid(0, 0);
            $SIG{$_} = 'DEFAULT' for qw(INT TERM HUP PIPE CHLD);
            open STDIN, '<', '/dev/null';
            my $out = $o{output} // '/dev/null';
            open STDOUT, '>>', $out or die "$out: $!";
            open STDERR, '>&', \*STDOUT or die "dup: $!";
            my %env = %{ $o{env} // {} };
            @ENV{ keys %env } = values %env;
            exec { $cmd->[0] } @$cmd or die "exec $cmd->[0]: $!";
        };
        print STDERR "DifyTest: $@";
        POSIX::_exit(127);
    }

    POSIX::setpgid($pid, $pid);
    my $p = { name => $name, pid => $pid, cmd => $cmd };
    $self->{procs}{$name} = $p;
    return $p;
}

# signals, waits until it exits; kills its group when late; reaps it.
# Returns (1 if it exited in time, wait status).
sub _stop_proc {
    my ($self, $p, $sig, $wait) = @_;
    my $pid = $p->{pid};
    my $graceful = 1;

    kill 'CONT', $pid if $p->{stopped};
    kill $sig, $pid;

    my $deadline = time + $wait;
    until (_is_dead($pid)) {
        if (time > $deadline) {
            $graceful = 0;
            kill 'KILL', -$pid;
            kill 'KILL', $pid;
            $deadline = time + 30;
        }
        sleep 0.02;
    }

    # the leader is a zombie, not reaped yet: its group id cannot have
    # been reused, so this reaches only what it left behind (workers,
    # forked children)
    kill 'KILL', -$pid;
    waitpid $pid, 0;
    my $status = $?;
    delete $self->{procs}{ $p->{name} }
        if $self->{procs}{ $p->{name} }
           && $self->{procs}{ $p->{name} } == $p;
    return ($graceful, $status);
}

# runs $cmd to completion (at most $o{timeout} s); returns ($rc, $output)
sub _run {
    my ($self, $cmd, %o) = @_;
    my $n = ++$self->{nrun};
    my $out = "$self->{dir}/run.$n.out";
    my $p = $self->_spawn("run$n", $cmd, output => $out, env => $o{env});
    my $wait = $o{timeout} // timeout(60);
    my $deadline = time + $wait;
    my $timed_out = 0;
    until (_is_dead($p->{pid})) {
        if (time > $deadline) {
            $timed_out = 1;
            kill 'KILL', -$p->{pid};
            last;
        }
        sleep 0.01;
    }
    my (undef, $status) = $self->_stop_proc($p, 'KILL', 30);
    my $output = _slurp($out);
    unlink $out;
    my $rc = $timed_out ? -1 : ($status & 127) ? -1 : $status >> 8;
    $output .= "\n[DifyTest: timed out after ${wait}s]" if $timed_out;
    return ($rc, $output);
}


# ------------------------------------------------------------------
# configuration

sub _placeholder {
    my ($self, $name, $for_test) = @_;

    return $self->{dir} if $name eq 'DIR';
    return $self->_module if $name eq 'MODULE';

    if ($name eq 'UPSTREAM' || $name eq 'UPSTREAM_PORT') {
        my $port = ($for_test && !$self->{procs}{upstream})
                 ? $self->_dead_port : $self->upstream_port;
        return $name eq 'UPSTREAM' ? "127.0.0.1:$port" : $port;
    }
    if ($name eq 'REDIS' || $name eq 'REDIS_PORT') {
        my $port = $self->redis_port;
        return $name eq 'REDIS' ? "127.0.0.1:$port" : $port;
    }
    if ($name eq 'DEAD' || $name eq 'DEAD_PORT') {
        my $port = $self->_dead_port;
        return $name eq 'DEAD' ? "127.0.0.1:$port" : $port;
    }
    if ($name =~ /^(?:H2)?PORT\w*$/) {
        return $self->port($name);
    }
    die "DifyTest: unknown placeholder %%$name%%\n";
}

# nginx loads a private copy of the module: a rebuild that overwrites
# DIFY_MODULE in place while a test runs would crash the workers
sub _module {
    my ($self) = @_;
    return '' unless $MODULE;
    return $self->{module} if $self->{module};
    my $copy = "$self->{dir}/ngx_http_dify_status_module.so";
    _spew($copy, _slurp($MODULE));
    chmod 0755, $copy;
    return $self->{module} = $copy;
}

# a bound socket that never listens: connecting to it is refused
sub _dead_port {
    my ($self) = @_;
    $self->{dead} //= IO::Socket::INET->new(
        LocalAddr => '127.0.0.1', LocalPort => 0, Proto => 'tcp',
    ) or die "DifyTest: bind: $!\n";
    return $self->{dead}->sockport;
}

sub _build_conf {
    my ($self, %a) = @_;
    my $for_test = $a{_for_test};
    my $conf;

    if (defined $a{conf}) {
        $conf = $a{conf};
    } else {
        my $main    = $a{main} // '';
        my $workers = $a{workers} // 1;
        my $level   = $self->{log_level};

        $conf = "# generated by t/lib/DifyTest.pm\n";
        $conf .= "load_module %%MODULE%%;\n"
            if $MODULE && !$a{no_module};
        $conf .= "user root;\n" if $> == 0 && $main !~ /^\s*user\s/m;
        if ($SANITIZE eq 'valgrind') {
            $conf .= "master_process off;\n";
        } else {
            $conf .= "master_process on;\n";
            $conf .= "worker_processes $workers;\n"
                if $main !~ /^\s*worker_processes\s/m;
        }
        $conf .= "daemon off;\n"
               . "pid %%DIR%%/nginx.pid;\n"
               . "error_log %%DIR%%/error.log $level;\n"
               . ($main =~ /^\s*worker_shutdown_timeout\s/m ? ''
                  : "worker_shutdown_timeout " . timeout(10) . "s;\n")
               . $main . "\n"
               . "events {\n    worker_connections 1024;\n"
               . ($a{events} // '') . "}\n\n"
               . "http {\n"
               . "    access_log %%DIR%%/access.log;\n"
               . "    client_body_temp_path %%DIR%%/tmp/client_body;\n"
               . "    proxy_temp_path %%DIR%%/tmp/proxy;\n"
               . "    fastcgi_temp_path %%DIR%%/tmp/fastcgi;\n"
               . "    uwsgi_temp_path %%DIR%%/tmp/uwsgi;\n"
               . "    scgi_temp_path %%DIR%%/tmp/scgi;\n"
               . "    default_type application/octet-stream;\n\n";
        if ($a{upstream_block} // 1) {
            $conf .= "    upstream upstream {\n"
                   . "        server 127.0.0.1:%%UPSTREAM_PORT%%;\n"
                   . "    }\n\n";
        }
        if (defined $a{http}) {
            $conf .= $a{http};
        } elsif (defined $a{server}) {
            $conf .= "    server {\n"
                   . "        listen 127.0.0.1:%%PORT%%;\n"
                   . "        listen 127.0.0.1:%%H2PORT%% http2;\n"
                   . "        server_name localhost;\n\n"
                   . $a{server}
                   . "\n    }\n";
        }
        $conf .= "\n}\n";
    }

    $conf =~ s/%%(\w+)%%/$self->_placeholder($1, $for_test)/ge;
    return $conf;
}

sub _conf_args {
    my ($self, @a) = @_;
    return (server => $a[0]) if @a == 1;
    return @a;
}


# ------------------------------------------------------------------
# nginx

sub nginx_t {
    my ($self, @a) = @_;
    my %a = $self->_conf_args(@a);
    my $n = ++$self->{nrun};
    my $file = "$self->{dir}/t-$n.conf";
    _spew($file, $self->_build_conf(%a, _for_test => 1));

    my ($rc, $out) = $self->_run(
        [ $NGINX, '-t', '-p', "$self->{dir}/", '-c', $file,
          '-e', "$self->{dir}/t-$n.log" ],
        env => { $self->_sanitizer_env(no_leaks => 1) });

    $out .= _slurp("$self->{dir}/t-$n.log") if $out !~ /\S/;
    return wantarray ? ($rc, $out) : $rc;
}

sub start_nginx {
    my ($self, @a) = @_;
    my %a = $self->_conf_args(@a);

    die "DifyTest: nginx is already running\n" if $self->{procs}{nginx};

    $self->start_upstream unless $a{no_upstream};

    for my $attempt (1 .. 5) {
        my $err = $self->_try_start(%a);
        return $self unless defined $err;
        if ($err =~ /Address already in use/ && $attempt < 5) {
            # someone took a port meanwhile: choose new ones
            delete $self->{ports}{$_} for @{ $self->{listen} };
            next;
        }
        die "DifyTest: nginx did not start:\n$err\n";
    }
}

sub _try_start {
    my ($self, %a) = @_;
    my $dir = $self->{dir};

    $self->{conf_args} = \%a;
    my $conf = $self->_build_conf(%a);
    _spew("$dir/nginx.conf", $conf);

    my %ours = reverse %{ $self->{ports} };
    my @listen;
    while ($conf =~ /^\s*listen\s+(?:127\.0\.0\.1:|localhost:|\*:)?(\d+)/mg) {
        push @listen, $1 if exists $ours{$1};
    }
    $self->{listen} = [ map { $ours{$_} } @listen ];

    my $mark = -s "$dir/error.log" // 0;
    my @cmd = ($NGINX, '-p', "$dir/", '-c', "$dir/nginx.conf",
               '-e', "$dir/error.log");
    if ($SANITIZE eq 'valgrind') {
        my @supp = -f "$LIBDIR/valgrind.supp"
                 ? ("--suppressions=$LIBDIR/valgrind.supp") : ();
        unshift @cmd, 'valgrind', '--error-exitcode=99',
            '--leak-check=full', '--errors-for-leak-kinds=definite',
            '--show-leak-kinds=definite', '--num-callers=40',
            '--track-origins=yes', '--trace-children=no',
            '--keep-debuginfo=yes',     # the module is dlclose()d at exit
            "--log-file=$dir/san/valgrind.%p.log", @supp;
    }

    # preload => 'lib.so', env => { extra }; the library goes before a
    # sanitizer's (libfaketime after libasan hangs at start; ASan runs
    # with verify_asan_link_order=0)
    my %env = ($self->_sanitizer_env, %{ $a{env} // {} });
    $env{LD_PRELOAD} = join ' ', grep { defined && length }
        ($a{preload}, $env{LD_PRELOAD}) if $a{preload};

    my $p = $self->_spawn('nginx', \@cmd,
        output => "$dir/nginx.stderr",
        env => \%env);

    my $deadline = time + timeout(20);
    my @pending = @listen;
    while (@pending) {
        if (_is_dead($p->{pid})) {
            $self->_stop_proc($p, 'KILL', 5);
            sleep 0.05;
            return "exited at start\n"
                . substr(_slurp("$dir/error.log"), $mark)
                . _slurp("$dir/nginx.stderr");
        }
        if (time > $deadline) {
            $self->_stop_proc($p, 'KILL', 5);
            return "not listening after " . timeout(20) . "s\n"
                . substr(_slurp("$dir/error.log"), $mark);
        }
        my $s = IO::Socket::INET->new(
            PeerAddr => '127.0.0.1', PeerPort => $pending[0],
            Proto => 'tcp', Timeout => 1);
        if ($s) {
            close $s;
            shift @pending;
            next;
        }
        sleep 0.05;
    }

    # the pid file is written before the workers start
    until (-s "$dir/nginx.pid") {
        last if time > $deadline;
        sleep 0.02;
    }
    return undef;
}

sub nginx_pid {
    my ($self) = @_;
    my $p = $self->{procs}{nginx} or return undef;
    return $p->{pid};
}

sub worker_pids {
    my ($self) = @_;
    my $master = $self->nginx_pid or return ();
    return ($master) if $SANITIZE eq 'valgrind';
    my @w;
    for my $stat (glob '/proc/[0-9]*/stat') {
        open my $fh, '<', $stat or next;
        my $s = <$fh> // next;
        my ($pid, $state, $ppid) = $s =~ /^(\d+) \(.*\) (\S) (\d+)/s
            or next;
        push @w, $pid if $ppid == $master && $state ne 'Z';
    }
    return sort { $a <=> $b } @w;
}

sub signal_nginx {
    my ($self, $sig) = @_;
    my $pid = $self->nginx_pid or die "DifyTest: nginx is not running\n";
    kill $sig, $pid;
}

sub log_mark {
    my ($self) = @_;
    return -s "$self->{dir}/error.log" // 0;
}

sub error_log {
    my ($self) = @_;
    return _slurp("$self->{dir}/error.log");
}

sub error_log_since {
    my ($self, $mark) = @_;
    my $l = $self->error_log;
    return length($l) > $mark ? substr($l, $mark) : '';
}

sub reload {
    my ($self, @a) = @_;
    die "DifyTest: reload is not supported in valgrind mode\n"
        if $SANITIZE eq 'valgrind';
    my %a = @a ? $self->_conf_args(@a) : %{ $self->{conf_args} // {} };
    my $pid = $self->nginx_pid or die "DifyTest: nginx is not running\n";

    $self->{conf_args} = \%a;
    _spew("$self->{dir}/nginx.conf", $self->_build_conf(%a));

    my $mark = $self->log_mark;
    my @old = $self->worker_pids;
    my $workers = $a{workers} // 1;
    if (($a{main} // '') =~ /^\s*worker_processes\s+(\d+)/m) {
        $workers = $1;
    }
    kill 'HUP', $pid;

    my $deadline = time + timeout(30);
    while (time < $deadline) {
        my $l = $self->error_log_since($mark);
        if ($l =~ /reconfiguring/) {
            return 0 if $l =~ /\[emerg\]/;
            my $started = () = $l =~ /start worker process \d+/g;
            if ($started >= $workers) {
                # the old workers stop accepting when told to quit: wait
                # until they are gone, so that no request reaches them
                my $gone = time + timeout(15);
                while (time < $gone && grep { !_is_dead($_) } @old) {
                    sleep 0.02;
                }
                return 1;
            }
        }
        sleep 0.05;
    }
    die "DifyTest: reload did not complete:\n"
        . $self->error_log_since($mark) . "\n";
}

sub stop_nginx {
    my ($self) = @_;
    my $p = $self->{procs}{nginx} or return 1;
    my $wait = timeout(30);
    my ($graceful, $status) = $self->_stop_proc($p, 'QUIT', $wait);
    unlink "$self->{dir}/nginx.pid";

    if (!$graceful) {
        push @{ $self->{problems} },
            "nginx did not exit within ${wait}s of SIGQUIT (killed)";
    } elsif ($status != 0
             && !($SANITIZE eq 'asan' && $status >> 8 == $ASAN_EXIT))
    {
        # (in asan mode, a sanitizer's exit is judged by its report)
        my $what = ($status & 127) ? 'signal ' . ($status & 127)
                                   : 'code ' . ($status >> 8);
        $what .= ' (valgrind found errors)'
            if $SANITIZE eq 'valgrind' && $status >> 8 == 99;
        push @{ $self->{problems} }, "nginx exited with $what";
    }
    return $graceful;
}


# ------------------------------------------------------------------
# the recording upstream

sub start_upstream {
    my ($self) = @_;
    return $self if $self->{procs}{upstream};
    my $dir = $self->{dir};
    my $pf = "$dir/upstream.port";
    unlink $pf;

    my $p = $self->_spawn('upstream',
        [ $^X, "$LIBDIR/upstream.pl", '--port-file', $pf,
          '--log', "$dir/upstream.log", '--conn-log', "$dir/upstream.conn" ],
        output => "$dir/upstream.stderr");

    my $deadline = time + timeout(20);
    until (-s $pf) {
        die "DifyTest: upstream.pl did not start:\n"
            . _slurp("$dir/upstream.stderr") . "\n"
            if _is_dead($p->{pid}) || time > $deadline;
        sleep 0.02;
    }
    ($self->{upstream_port}) = _slurp($pf) =~ /(\d+)/;
    $USED_PORTS{ $self->{upstream_port} }++;
    $self->upstream_clear;
    return $self;
}

sub upstream_port {
    my ($self) = @_;
    $self->start_upstream;
    return $self->{upstream_port};
}

sub upstream_requests {
    my ($self) = @_;
    my @r;
    for my $line (split /\n/, _slurp("$self->{dir}/upstream.log")) {
        next unless $line =~ /\S/;
        # the body first, out of JSON::PP's way (slow on megabytes)
        my $b64 = $line =~ s/^\{"body_b64":"([A-Za-z0-9+\/=]*)",/{/ ? $1 : '';
        my $rec = JSON::PP->new->decode($line);
        $rec->{body} = decode_base64($b64);
        $rec->{head} = decode_base64($rec->{head_b64});
        my %h;
        for (@{ $rec->{headers} }) {
            my $k = lc $_->[0];
            $h{$k} = exists $h{$k} ? "$h{$k}, $_->[1]" : $_->[1];
        }
        $rec->{hdr} = \%h;
        push @r, $rec;
    }
    return @r;
}

sub upstream_connections {
    my ($self) = @_;
    my @l = grep { /\S/ } split /\n/, _slurp("$self->{dir}/upstream.conn");
    return scalar @l;
}

sub upstream_clear {
    my ($self) = @_;
    _spew("$self->{dir}/upstream.log", '');
    _spew("$self->{dir}/upstream.conn", '');
}


# ------------------------------------------------------------------
# redis

sub redis_port {
    my ($self) = @_;
    return $self->{redis_port} //= _free_port();
}

sub start_redis {
    my ($self, %o) = @_;
    return $self if $self->{procs}{redis};
    my $dir = $self->{dir};

    $self->{redis_opts} = \%o if %o;
    %o = %{ $self->{redis_opts} // {} };
    $self->{redis_password} = $o{password};

    for my $attempt (1 .. 5) {
        my $port = $self->redis_port;
        my $mark = -s "$dir/redis.log" // 0;
        my $p = $self->_spawn('redis',
            [ 'redis-server', '--port', $port, '--bind', '127.0.0.1',
              '--save', '', '--appendonly', 'no', '--dir', "$dir/redis",
              '--daemonize', 'no', '--logfile', "$dir/redis.log",
              (defined $o{password} ? ('--requirepass', $o{password}) : ()),
              @{ $o{args} // [] } ],
            output => "$dir/redis.stderr");

        my $deadline = time + timeout(20);
        while (1) {
            if (_is_dead($p->{pid})) {
                $self->_stop_proc($p, 'KILL', 5);
                my $log = substr(_slurp("$dir/redis.log"), $mark)
                        . _slurp("$dir/redis.stderr");
                if ($log =~ /Address already in use/ && $attempt < 5
                    && !$self->{procs}{nginx})
                {
                    delete $self->{redis_port};
                    last;
                }
                die "DifyTest: redis-server did not start:\n$log\n";
            }
            die "DifyTest: redis-server not answering\n" if time > $deadline;
            my $r = eval { $self->redis('PING') };
            return $self if defined $r
                && (!ref $r || $r->{error} =~ /NOAUTH/);
            sleep 0.05;
        }
    }
    die "DifyTest: redis-server did not start\n";
}

sub stop_redis {
    my ($self) = @_;
    my $p = $self->{procs}{redis} or return;
    $self->_stop_proc($p, 'TERM', timeout(20));
}

sub kill_redis {
    my ($self) = @_;
    my $p = $self->{procs}{redis} or return;
    $self->_stop_proc($p, 'KILL', timeout(20));
}

sub restart_redis {
    my ($self) = @_;
    $self->stop_redis;
    $self->start_redis;
}

sub pause_redis {
    my ($self) = @_;
    my $p = $self->{procs}{redis} or die "DifyTest: redis is not running\n";
    kill 'STOP', $p->{pid};
    $p->{stopped} = 1;
}

sub resume_redis {
    my ($self) = @_;
    my $p = $self->{procs}{redis} or die "DifyTest: redis is not running\n";
    kill 'CONT', $p->{pid};
    $p->{stopped} = 0;
}

sub redis_cli {
    my ($self, @args) = @_;
    my @auth = defined $self->{redis_password}
        ? ('-a', $self->{redis_password}, '--no-auth-warning') : ();
    my ($rc, $out) = $self->_run(
        [ 'redis-cli', '-h', '127.0.0.1', '-p', $self->redis_port, @auth,
          '--raw', @args ],
        timeout => timeout(10));
    $out =~ s/\n\z//;
    return $out;
}

# one command over RESP; dies when Redis does not answer in time
sub redis {
    my ($self, @cmd) = @_;
    my $o = ref $cmd[0] eq 'HASH' ? shift @cmd : {};
    my $wait = $o->{timeout} // timeout(10);
    my $s = IO::Socket::INET->new(
        PeerAddr => '127.0.0.1', PeerPort => $self->redis_port,
        Proto => 'tcp', Timeout => $wait,
    ) or die "DifyTest: redis connect: $!\n";
    binmode $s;
    my $c = DifyTest::Conn->_wrap($s, $wait);

    my $req = '';
    if (defined $self->{redis_password} && uc($cmd[0]) ne 'AUTH') {
        $req .= _resp_cmd('AUTH', $self->{redis_password});
    }
    $req .= _resp_cmd(@cmd);
    $c->send($req);
    if (defined $self->{redis_password} && uc($cmd[0]) ne 'AUTH') {
        $c->_resp_reply;
    }
    my $r = $c->_resp_reply;
    $c->close;
    return $r;
}

sub _resp_cmd {
    my @a = @_;
    return '*' . @a . "\r\n"
        . join('', map { '$' . length($_) . "\r\n$_\r\n" } @a);
}


# ------------------------------------------------------------------
# clients

sub _res_from_parts {
    my ($version, $status, $reason, $pairs, $body) = @_;
    my %h;
    for (@$pairs) {
        my $k = lc $_->[0];
        $h{$k} = exists $h{$k} ? "$h{$k}, $_->[1]" : $_->[1];
    }
    my $json = eval { JSON::PP->new->decode($body) };
    return {
        version     => $version,
        status      => $status,
        reason      => $reason,
        headers     => \%h,
        header_list => $pairs,
        body        => $body,
        json        => $json,
        interim     => [],
    };
}

sub request {
    my ($self, $method, $path, %o) = @_;
    my $port = $o{port} // $self->port('PORT');
    my $http = HTTP::Tiny->new(
        timeout => timeout(30), max_redirect => 0, keep_alive => 0,
        agent => 'dify-test/1');
    my $res = $http->request($method, "http://127.0.0.1:$port$path", {
        headers => $o{headers} // {},
        (defined $o{body} ? (content => $o{body}) : ()),
    });
    my @pairs;
    for my $k (sort keys %{ $res->{headers} }) {
        my $v = $res->{headers}{$k};
        push @pairs, map { [ $k, $_ ] } ref $v ? @$v : ($v);
    }
    return _res_from_parts($res->{protocol} // '', $res->{status},
                           $res->{reason}, \@pairs, $res->{content} // '');
}

sub _header_pairs {
    my ($h) = @_;
    return () unless defined $h;
    return map { [ $_, $h->{$_} ] } sort keys %$h if ref $h eq 'HASH';
    my @a = @$h;
    my @p;
    push @p, [ splice @a, 0, 2 ] while @a;
    return @p;
}

sub build_request {
    my ($method, $path, %o) = @_;
    my @h = _header_pairs($o{headers});
    my %has = map { lc $_->[0] => 1 } @h;
    my $body = $o{body};

    unshift @h, [ Host => 'localhost' ] unless $has{host};

    my $wire = $body;
    if ($o{chunked}) {
        push @h, [ 'Transfer-Encoding' => 'chunked' ]
            unless $has{'transfer-encoding'};
        $body //= '';
        my @sizes = ref $o{chunked} ? @{ $o{chunked} } : ();
        if (!@sizes) {
            my $third = int(length($body) / 3) || 1;
            @sizes = ($third, $third);
        }
        $wire = '';
        my $off = 0;
        while ($off < length $body) {
            my $n = @sizes ? shift @sizes : length($body) - $off;
            $n = length($body) - $off if $n > length($body) - $off;
            $n = 1 if $n < 1;
            $wire .= sprintf("%x\r\n", $n) . substr($body, $off, $n) . "\r\n";
            $off += $n;
        }
        $wire .= "0\r\n\r\n";
    } elsif (defined $body && !$has{'content-length'} && !$o{no_length}) {
        push @h, [ 'Content-Length' => length $body ];
    }
    push @h, [ Expect => '100-continue' ]
        if $o{expect} && !$has{expect};
    push @h, [ Connection => 'close' ]
        unless $o{keep_alive} || $has{connection};

    my $head = "$method $path " . ($o{version} // 'HTTP/1.1') . "\r\n"
        . join('', map { "$_->[0]: $_->[1]\r\n" } @h) . "\r\n";
    return ($head, $wire // '');
}

sub connect {
    my ($self, %o) = @_;
    return DifyTest::Conn->new($o{port} // $self->port('PORT'),
                               $o{timeout} // timeout(30));
}

sub http {
    my ($self, $method, $path, %o) = @_;
    my ($head, $body) = build_request($method, $path, %o);
    my $c = $self->connect(port => $o{port});
    my $res;

    if ($o{expect}) {
        $c->send($head);
        $res = $c->read_response(head => $method eq 'HEAD',
                                 keep_interim => 1);
        die "DifyTest: no answer to an Expect: 100-continue head\n"
            unless $res;
        my @interim;
        if ($res->{status} == 100) {
            push @interim, $res;
            $c->send($body);
            $res = $c->read_response(head => $method eq 'HEAD');
            die "DifyTest: no answer after the body\n" unless $res;
            $res->{body_sent} = 1;
        } else {
            $res->{body_sent} = 0;
        }
        unshift @{ $res->{interim} }, @interim;
    } elsif ($o{trickle}) {
        # the head, then the body (as it goes on the wire) in pieces, a
        # pause before each: nginx reads the body in several events
        $c->send($head);
        my @sizes = @{ $o{pieces} // [] };
        my $off = 0;
        while ($off < length $body) {
            my $n = @sizes ? shift @sizes : int(length($body) / 3) + 1;
            sleep $o{trickle};
            last unless $c->send(substr $body, $off, $n);
            $off += $n;
        }
        $res = $c->read_response(head => $method eq 'HEAD');
        die "DifyTest: no answer to $method $path\n" unless $res;
    } else {
        $c->send($head . $body);
        $res = $c->read_response(head => $method eq 'HEAD');
        die "DifyTest: no answer to $method $path\n" unless $res;
    }
    $c->close;
    return $res;
}

sub raw {
    my ($self, $bytes, %o) = @_;
    my $c = $self->connect(port => $o{port});
    $c->send($bytes);
    $c->shutdown_write if $o{shutdown};
    my $all = $c->read_all(timeout => $o{timeout} // timeout(10));
    $c->close;
    return $all;
}

sub parse_responses {
    my ($bytes, %o) = @_;
    my $c = DifyTest::Conn->_from_bytes($bytes);
    my @r;
    while (my $r = $c->read_response(keep_interim => 1, %o)) {
        push @r, $r;
    }
    return @r;
}

sub h2_connect {
    my ($self, %o) = @_;
    require DifyTest::H2;
    return DifyTest::H2->new(port => $o{port} // $self->port('H2PORT'),
                             timeout => $o{timeout} // timeout(30));
}

sub h2 {
    my ($self, $method, $path, %o) = @_;
    my $h = $self->h2_connect(port => $o{port});
    my @h = map { @$_ } _header_pairs($o{headers});
    my $res = $h->request($method, $path, headers => \@h, body => $o{body},
                          no_length => $o{no_length}, pause => $o{pause},
                          frame => $o{frame});
    $h->close;
    die "DifyTest: no HTTP/2 response to $method $path\n"
        unless $res && defined $res->{status};
    return $res;
}

sub have_curl_h2 {
    my $v = `curl --version 2>/dev/null`;
    return $v =~ /\bHTTP2\b/ ? 1 : 0;
}

sub h2_curl {
    my ($self, $method, $path, %o) = @_;
    my $port = $o{port} // $self->port('H2PORT');
    my @cmd = ('curl', '-sS', '-i', '--http2-prior-knowledge',
               '--max-time', timeout(30), '-X', $method);
    my @h = _header_pairs($o{headers});
    my %has = map { lc $_->[0] => 1 } @h;
    for (@h) {
        push @cmd, '-H', $_->[1] eq '' ? "$_->[0];" : "$_->[0]: $_->[1]";
    }
    if (defined $o{body}) {
        my $f = "$self->{dir}/h2-body." . ++$self->{nrun};
        _spew($f, $o{body});
        push @cmd, '--data-binary', "\@$f";
        push @cmd, '-H', 'Content-Type:' unless $has{'content-type'};
    }
    push @cmd, "http://127.0.0.1:$port$path";

    my ($rc, $out) = $self->_run(\@cmd, timeout => timeout(40));
    die "DifyTest: curl failed ($rc): $out\n" if $rc != 0;
    my @r = parse_responses($out, eof_body => 1);
    die "DifyTest: no HTTP/2 response: $out\n" unless @r;
    my $res = pop @r;
    $res->{interim} = \@r;
    return $res;
}


# ------------------------------------------------------------------
# assertions

sub nothing_upstream {
    my ($self, $name) = @_;
    my @r = $self->upstream_requests;
    my $c = $self->upstream_connections;
    my $ok = Test::More::ok(!@r && !$c,
        ($name // 'rejected') . ': upstream received nothing');
    Test::More::diag("upstream got " . scalar(@r) . " request(s), $c "
        . "connection(s): " . join(', ', map { "$_->{method} $_->{uri}" } @r))
        unless $ok;
    $self->upstream_clear;
    return $ok;
}

sub reject_ok {
    my ($self, $res, $status, $code, $message, $name) = @_;
    $name //= "$status $code";
    local $Test::Builder::Level = $Test::Builder::Level + 1;

    return Test::More::subtest($name => sub {
        Test::More::is($res->{status}, $status, "status $status")
            or Test::More::diag("body: $res->{body}");
        Test::More::is($res->{headers}{'content-type'}, 'application/json',
            'Content-Type: application/json');
        if (ref $message eq 'Regexp') {
            Test::More::like($res->{body},
                qr/^\{"status": $status, "code": "\Q$code\E", "message": "(?:[^"\\]|\\.)+"\}$/,
                'envelope {"status", "code", "message"} in that order');
            my $m = $res->{json} ? $res->{json}{message} : undef;
            Test::More::like($m // '', $message, 'message');
        } else {
            Test::More::is($res->{body}, envelope($status, $code, $message),
                'body byte for byte');
        }
        Test::More::is($res->{headers}{'content-length'},
            length $res->{body}, 'Content-Length')
            if ($res->{version} // '') !~ /^2/
               || defined $res->{headers}{'content-length'};
        if ($status == 401) {
            Test::More::is($res->{headers}{'www-authenticate'},
                'Bearer realm="api"', 'WWW-Authenticate: Bearer realm="api"');
        }
        $self->nothing_upstream('upstream');
    });
}

sub pass_ok {
    my ($self, $res, %e) = @_;
    my $name = $e{name} // 'passed to the upstream';
    local $Test::Builder::Level = $Test::Builder::Level + 1;

    return Test::More::subtest($name => sub {
        Test::More::is($res->{status}, 200, 'status 200')
            or Test::More::diag("body: $res->{body}");
        Test::More::is($res->{body}, '{"result": "success"}',
            'the upstream\'s body');
        my @r = $self->upstream_requests;
        Test::More::is(scalar @r, 1, 'upstream got exactly one request')
            or Test::More::diag(join ', ', map { "$_->{method} $_->{uri}" } @r);
        my $u = $r[0] // { method => '', uri => '', body => '', hdr => {} };
        Test::More::is($u->{method}, $e{method}, "method $e{method}")
            if defined $e{method};
        Test::More::is($u->{uri}, $e{uri}, "URI $e{uri}")
            if defined $e{uri};
        if (defined $e{body}) {
            _bytes_is($u->{body}, $e{body}, 'body byte for byte');
        }
        for my $k (sort keys %{ $e{headers} // {} }) {
            Test::More::is($u->{hdr}{ lc $k }, $e{headers}{$k},
                "upstream header $k");
        }
        $self->upstream_clear;
    });
}

sub _bytes_is {
    my ($got, $exp, $name) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    return Test::More::pass($name) if defined $got && $got eq $exp;
    Test::More::fail($name);
    if (!defined $got) {
        Test::More::diag('got undef');
        return 0;
    }
    my $i = 0;
    $i++ while $i < length($got) && $i < length($exp)
        && substr($got, $i, 1) eq substr($exp, $i, 1);
    Test::More::diag(sprintf 'got %d bytes, expected %d; first difference '
        . 'at offset %d: got %s, expected %s', length $got, length $exp, $i,
        JSON::PP->new->allow_nonref->ascii->encode(substr $got, $i, 40),
        JSON::PP->new->allow_nonref->ascii->encode(substr $exp, $i, 40));
    return 0;
}


# ------------------------------------------------------------------
# teardown

sub _teardown {
    my ($self) = @_;
    my $dir = $self->{dir};

    $self->stop_nginx;
    $self->stop_redis;
    for my $p (values %{ $self->{procs} }) {
        $self->_stop_proc($p, 'TERM', timeout(10));
    }
    close $self->{dead} if $self->{dead};

    my @problems = @{ $self->{problems} };

    my @bad;
    for my $line (split /\n/, _slurp("$dir/error.log")) {
        next unless $line =~ /\[(?:alert|crit|emerg)\]/;
        next if grep { $line =~ $_ } @{ $self->{allowed} };
        push @bad, $line;
    }
    push @problems, "error.log has alert/crit/emerg lines:\n  "
        . join("\n  ", @bad) if @bad;

    for my $f (sort glob "$dir/san/asan* $dir/san/ubsan*") {
        next unless -s $f;
        my $r = _slurp($f);
        next if _nginx_own_leaks_only($r);
        $r = substr($r, 0, 20000) . "\n[...]" if length $r > 20000;
        push @problems, "sanitizer report $f:\n$r";
    }
    for my $f (sort glob "$dir/san/valgrind.*.log") {
        my $r = _slurp($f);
        my ($n) = $r =~ /ERROR SUMMARY: (\d+) errors/;
        next unless $n;
        $r = substr($r, 0, 30000) . "\n[...]" if length $r > 30000;
        push @problems, "valgrind report $f ($n errors):\n$r";
    }
    return @problems;
}

# A LeakSanitizer report in which every leak was allocated with no frame
# of ours on the stack is nginx's own (see t/lib/lsan.supp): it does not
# fail the test.  Any other report (an ASan error, UBSan, a leak with one
# of our frames or from libjansson/libhiredis) does.
my $OURS = qr/ngx_http_dify|\bdify_|ngx_http_dify_status_module\.so
             |libjansson|libhiredis|ngx_dify_status_module\/
             |<unknown\ module>/x;     # unknown: cannot prove it is not ours

sub _nginx_own_leaks_only {
    my ($r) = @_;
    return 0 unless $r =~ /ERROR: LeakSanitizer: detected memory leaks/;
    return 0 if $r =~ /ERROR: (?!LeakSanitizer)/;
    return 0 if $r =~ /runtime error:/;
    my @blocks = split /\n(?=(?:Direct|Indirect) leak of )/, $r;
    shift @blocks;
    return 0 unless @blocks;
    for my $b (@blocks) {
        $b =~ s/\n\s*\n.*//s;           # the stack ends at a blank line
        return 0 if $b =~ $OURS;
    }
    return 1;
}

sub done {
    my ($self) = @_;
    return if $self->{done}++;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my @problems = $self->_teardown;
    my $ok = Test::More::ok(!@problems, 'teardown: nginx quit gracefully, '
        . 'no alert/crit/emerg in the error log, no sanitizer report');
    Test::More::diag(join "\n", @problems, "(files kept in $self->{dir})")
        unless $ok;
    if ($ok && !$self->{keep}) {
        remove_tree($self->{dir});
    } elsif ($ok) {
        Test::More::note("files kept in $self->{dir}");
    }
    return $ok;
}

END {
    if ($$ == $OWNER) {
        my $rc = $?;
        for my $t (@INSTANCES) {
            next if $t->{done}++;
            my @problems = eval { $t->_teardown };
            push @problems, "teardown died: $@" if $@;
            if (@problems) {
                Test::More::diag("teardown (in END, done() was not called):"
                    . "\n" . join("\n", @problems)
                    . "\n(files kept in $t->{dir})");
                Test::More::ok(0, 'teardown: clean shutdown');
            } elsif (!$t->{keep}) {
                remove_tree($t->{dir});
            }
        }
        $? = $rc;
    }
}


# ------------------------------------------------------------------

package DifyTest::Conn;

use strict;
use warnings;
use Time::HiRes qw(time);

sub new {
    my ($class, $port, $timeout) = @_;
    my $s = IO::Socket::INET->new(
        PeerAddr => '127.0.0.1', PeerPort => $port, Proto => 'tcp',
        Timeout => $timeout,
    ) or die "DifyTest: connect to 127.0.0.1:$port: $!\n";
    binmode $s;
    return $class->_wrap($s, $timeout);
}

sub _wrap {
    my ($class, $s, $timeout) = @_;
    return bless { sock => $s, buf => '', eof => 0, timeout => $timeout },
        $class;
}

sub _from_bytes {
    my ($class, $bytes) = @_;
    return bless { sock => undef, buf => $bytes, eof => 1, timeout => 0 },
        $class;
}

sub send {
    my ($self, $bytes) = @_;
    local $SIG{PIPE} = 'IGNORE';
    my $off = 0;
    while ($off < length $bytes) {
        my $n = syswrite $self->{sock}, $bytes, length($bytes) - $off, $off;
        return 0 unless defined $n;
        $off += $n;
    }
    return 1;
}

# reads more; 1 got data, 0 EOF, undef timeout (or error)
sub _fill {
    my ($self, $deadline) = @_;
    return 0 if $self->{eof} || !$self->{sock};
    my $left = $deadline - time;
    return undef if $left <= 0;
    my $rin = '';
    vec($rin, fileno $self->{sock}, 1) = 1;
    my $n = select(my $rout = $rin, undef, undef, $left);
    return undef unless $n && $n > 0;
    $n = sysread $self->{sock}, $self->{buf}, 65536, length $self->{buf};
    if (!defined $n) {
        return 0 if $!{ECONNRESET};
        return undef;
    }
    if ($n == 0) {
        $self->{eof} = 1;
        return 0;
    }
    return 1;
}

sub read_all {
    my ($self, %o) = @_;
    my $deadline = time + ($o{timeout} // $self->{timeout});
    while (1) {
        my $r = $self->_fill($deadline);
        last unless $r;
    }
    my $all = $self->{buf};
    $self->{buf} = '';
    return $all;
}

# 1 when the peer closes within $s seconds (pending data is discarded)
sub eof_within {
    my ($self, $s) = @_;
    my $deadline = time + $s;
    while (1) {
        my $r = $self->_fill($deadline);
        return 1 if defined $r && $r == 0;
        return 0 unless defined $r;
    }
}

sub _need_line {
    my ($self, $deadline) = @_;
    until ($self->{buf} =~ /\n/) {
        return 0 unless $self->_fill($deadline);
    }
    return 1;
}

# one response; undef when the connection closed or timed out before it
sub read_response {
    my ($self, %o) = @_;
    my $deadline = time + ($o{timeout} // $self->{timeout});
    my @interim;

    while (1) {
        my $end;
        while (1) {
            if ($self->{buf} =~ /\r?\n\r?\n/) {
                $end = $+[0];
                last;
            }
            if (!$self->_fill($deadline)) {
                return undef;
            }
        }
        my $head = substr $self->{buf}, 0, $end, '';
        my @lines = split /\r?\n/, $head;
        my $sl = shift @lines;
        my ($version, $status, $reason) =
            $sl =~ m{^HTTP/(\S+)\s+(\d{3})\s*(.*)$}
            or die "DifyTest: bad status line: $sl\n";
        my @pairs;
        for (@lines) {
            next if $_ eq '';
            my ($n, $v) = /^([^:]+):\s*(.*?)\s*$/ or next;
            push @pairs, [ $n, $v ];
        }
        my %h;
        $h{ lc $_->[0] } = defined $h{ lc $_->[0] }
            ? "$h{lc $_->[0]}, $_->[1]" : $_->[1] for @pairs;

        if ($status >= 100 && $status < 200) {
            push @interim, DifyTest::_res_from_parts(
                $version, $status, $reason, \@pairs, '');
            return $interim[-1] if $o{keep_interim};
            next;
        }

        my $body = '';
        if ($o{head} || $status == 204 || $status == 304) {
            # no body
        } elsif (($h{'transfer-encoding'} // '') =~ /chunked/i) {
            while (1) {
                $self->_need_line($deadline) or return undef;
                $self->{buf} =~ s/^([0-9a-fA-F]+)[^\n]*\n//
                    or die "DifyTest: bad chunk\n";
                my $size = hex $1;
                if ($size == 0) {
                    while (1) {
                        $self->_need_line($deadline) or last;
                        $self->{buf} =~ s/^([^\n]*)\n//;
                        last if $1 =~ /^\r?$/;
                    }
                    last;
                }
                while (length($self->{buf}) < $size + 2) {
                    $self->_fill($deadline) or return undef;
                }
                $body .= substr $self->{buf}, 0, $size, '';
                $self->{buf} =~ s/^\r?\n//;
            }
        } elsif (defined $h{'content-length'} && !$o{eof_body}) {
            my $len = $h{'content-length'};
            while (length($self->{buf}) < $len) {
                last unless $self->_fill($deadline);
            }
            $body = substr $self->{buf}, 0, $len, '';
        } else {
            1 while $self->_fill($deadline);
            $body = $self->{buf};
            $self->{buf} = '';
        }

        my $res = DifyTest::_res_from_parts($version, $status, $reason,
                                            \@pairs, $body);
        $res->{interim} = \@interim;
        return $res;
    }
}

sub shutdown_write {
    my ($self) = @_;
    shutdown $self->{sock}, 1 if $self->{sock};
}

sub close {
    my ($self) = @_;
    close $self->{sock} if $self->{sock};
    $self->{sock} = undef;
}

# RESP reply (for DifyTest::redis)
sub _resp_reply {
    my ($self) = @_;
    my $deadline = time + $self->{timeout};
    $self->_need_line($deadline) or die "DifyTest: no reply from redis\n";
    $self->{buf} =~ s/^(.)([^\r\n]*)\r?\n//s;
    my ($t, $v) = ($1, $2);
    return $v if $t eq '+';
    return { error => $v } if $t eq '-';
    return 0 + $v if $t eq ':';
    if ($t eq '$') {
        return undef if $v < 0;
        while (length($self->{buf}) < $v + 2) {
            $self->_fill($deadline) or die "DifyTest: short redis reply\n";
        }
        my $s = substr $self->{buf}, 0, $v, '';
        $self->{buf} =~ s/^\r\n//;
        return $s;
    }
    if ($t eq '*') {
        return undef if $v < 0;
        return [ map { $self->_resp_reply } 1 .. $v ];
    }
    die "DifyTest: bad redis reply: $t$v\n";
}

1;
