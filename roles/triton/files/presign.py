import sys

import boto3

bucket, _, key = sys.argv[1].removeprefix("s3://").partition("/")
print(boto3.client("s3").generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=int(sys.argv[2])))
