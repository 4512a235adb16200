/* SPDX-License-Identifier: MIT */
/*
 * example_ofi - import uodp as libfabric's memory monitor, then use
 * libfabric as usual. The import must come before the first fi_domain():
 * domains take their cache's monitor when they open.
 *
 *   example_ofi [provider]     (default "tcp;ofi_rxm", on 127.0.0.1)
 *
 * Prints what the monitor saw. Providers that register memory with
 * hardware (verbs, efa) cache registrations and subscribe them here;
 * software providers (tcp, shm for host memory) register nothing, so the
 * monitor stays idle with them. Exit 77 when uodp's kernel monitor is
 * unavailable or the provider is absent.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <rdma/fabric.h>
#include <rdma/fi_domain.h>

#include "uodp.h"
#include "uodp_ofi.h"

int main(int argc, char **argv)
{
	const char *prov = argc > 1 ? argv[1] : "tcp;ofi_rxm";
	struct fi_info *hints, *info = NULL;
	struct fid_fabric *fabric = NULL;
	struct fid_domain *domain = NULL;
	struct fid_mr *mr = NULL;
	struct uodp_ofi_stats st;
	size_t len = 1 << 20;
	void *buf;
	int r;

	r = uodp_ofi_import(0);
	if (r == -ENOSYS || r == -EPERM) {
		printf("SKIP: uodp_ofi_import: %s\n", uodp_strerror(r));
		return 77;
	}
	if (r) {
		fprintf(stderr, "uodp_ofi_import: %s\n", uodp_strerror(r));
		return 1;
	}

	hints = fi_allocinfo();
	hints->ep_attr->type = FI_EP_RDM;
	hints->caps = FI_MSG | FI_RMA;
	hints->domain_attr->mr_mode = FI_MR_VIRT_ADDR | FI_MR_ALLOCATED |
				      FI_MR_PROV_KEY | FI_MR_LOCAL;
	hints->fabric_attr->prov_name = strdup(prov);
	r = fi_getinfo(FI_VERSION(1, 13), "127.0.0.1", NULL, 0, hints, &info);
	fi_freeinfo(hints);
	if (r) {
		printf("SKIP: no %s provider: %s\n", prov, fi_strerror(-r));
		uodp_ofi_close();
		return 77;
	}
	r = fi_fabric(info->fabric_attr, &fabric, NULL);
	if (!r)
		r = fi_domain(fabric, info, &domain, NULL);
	if (r) {
		fprintf(stderr, "fabric/domain: %s\n", fi_strerror(-r));
		return 1;
	}

	buf = mmap(NULL, len, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (buf == MAP_FAILED)
		return 1;
	memset(buf, 1, len);
	r = fi_mr_reg(domain, buf, len, FI_SEND | FI_RECV | FI_REMOTE_WRITE, 0,
		      0, 0, &mr, NULL);
	if (r) {
		fprintf(stderr, "fi_mr_reg: %s\n", fi_strerror(-r));
		return 1;
	}
	fi_close(&mr->fid);
	munmap(buf, len);

	uodp_ofi_stats(&st);
	printf("%s: %llu regions subscribed, %llu notifies, %llu watched now"
	       "%s\n",
	       info->fabric_attr->prov_name, (unsigned long long)st.subscribes,
	       (unsigned long long)st.notifies, (unsigned long long)st.watched,
	       st.subscribes ? "" :
			       " (this provider does not cache registrations)");

	fi_close(&domain->fid);
	fi_close(&fabric->fid);
	fi_freeinfo(info);
	r = uodp_ofi_close();
	if (r)
		fprintf(stderr, "uodp_ofi_close: %s\n", uodp_strerror(r));
	return r ? 1 : 0;
}
