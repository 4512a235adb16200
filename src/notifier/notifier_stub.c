/* TEMPORARY: replaced by notifier.c (process-wide notifier). */
#include <errno.h>
#include "notifier/notifier.h"
int unf_subscribe(const struct unf_ops *ops, void *owner, unsigned flags,
		  struct unf_sub **out)
{
	(void)ops;
	(void)owner;
	(void)flags;
	(void)out;
	return -ENOSYS;
}
void unf_unsubscribe(struct unf_sub *sub)
{
	(void)sub;
}
int unf_watch(struct unf_sub *sub, uint64_t start, uint64_t end)
{
	(void)sub;
	(void)start;
	(void)end;
	return -ENOSYS;
}
void unf_unwatch(struct unf_sub *sub, uint64_t start, uint64_t end)
{
	(void)sub;
	(void)start;
	(void)end;
}
int unf_prepare(struct unf_sub *sub, uint64_t start, uint64_t end)
{
	(void)sub;
	(void)start;
	(void)end;
	return 0;
}
