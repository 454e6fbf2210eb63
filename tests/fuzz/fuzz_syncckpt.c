/*
 * tests/fuzz/fuzz_syncckpt - the agent's local sync checkpoint file
 * (storage/syncckpt) from arbitrary bytes. Beyond "no crash, no undefined
 * behaviour": anything but a file that decodes is -EBADMSG with one line
 * naming the file; one that decodes is exactly 44 bytes and written back
 * (to a scratch file) reads back the same.
 * Seeds: tests/fuzz/corpus/fuzz_syncckpt/ (a valid file, a torn one, a
 * finished sync's).
 */
#include <assert.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "storage/syncckpt.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct cdp_err err = CDP_ERR_INIT;
	struct cdp_syncckpt ck, back;
	char path[64];
	int rc = cdp_syncckpt_decode(data, size, "F", &ck, &err);

	if (rc) {
		assert(rc == -EBADMSG && err.code == -EBADMSG);
		assert(strstr(err.msg, "sync checkpoint F: ") == err.msg);
		assert(!strchr(err.msg, '\n'));
		return 0;
	}
	assert(size == CDP_SYNCCKPT_LEN);
	snprintf(path, sizeof(path), "/tmp/fuzz-syncckpt-%d", (int)getpid());
	if (cdp_syncckpt_write(path, &ck, NULL, &err))
		abort();
	rc = cdp_syncckpt_read(path, &back, NULL, &err);
	unlink(path);
	assert(rc == 1);
	assert(!memcmp(&ck, &back, sizeof(ck)));
	return 0;
}
